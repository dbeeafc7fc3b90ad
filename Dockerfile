# One image for every mailstack daemon; docker-compose runs `mailstack serve NAME` per service.
# PYTHON_IMAGE: any image with Python 3.11+ and pip (CI builds a Debian stand-in when Docker Hub
# cannot be reached: .ci/docker-base)
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}

# a non-root user; it binds the standard ports thanks to the compose file's
# net.ipv4.ip_unprivileged_port_start=0 (or grant CAP_NET_BIND_SERVICE with setcap)
RUN useradd --system --uid 1000 --home-dir /data --shell /usr/sbin/nologin mailstack \
    && mkdir -p /data /etc/mailstack && chown mailstack:mailstack /data

WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY mailstack ./mailstack
RUN pip install --no-cache-dir . && rm -rf /src
COPY configs/docker.toml /etc/mailstack/mailstack.toml

USER mailstack
WORKDIR /data
VOLUME ["/data"]
ENV MAILSTACK_CONFIG=/etc/mailstack/mailstack.toml PYTHONUNBUFFERED=1
EXPOSE 25 587 465 143 993 110 995 80 443
ENTRYPOINT ["mailstack"]
CMD ["up"]
