"""The HTTP daemon (uvicorn + Starlette): autoconfig pages, JMAP over HTTPS, push."""
