# One image for every mailstack daemon; docker-compose runs `mailstack serve NAME` per service.
FROM python:3.11-slim
RUN useradd --system --uid 1000 --home-dir /data --shell /usr/sbin/nologin mailstack \
    && mkdir /data && chown mailstack /data
WORKDIR /src
COPY pyproject.toml README.md LICENSE ./
COPY mailstack ./mailstack
RUN pip install --no-cache-dir . && rm -rf /src
USER mailstack
VOLUME ["/data"]
ENV MAILSTACK_CONFIG=/etc/mailstack/mailstack.toml
COPY configs/docker.toml /etc/mailstack/mailstack.toml
ENTRYPOINT ["mailstack"]
CMD ["up"]
