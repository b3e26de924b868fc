# jectguard: the proxy, its admin API and the feed refresher in one image.
#
#   docker build -t jectguard .
#   docker run -d --name jectguard -p 127.0.0.1:8080:8080 -p 127.0.0.1:8090:8090 \
#       -v jectguard-cache:/data/cache -v jectguard-ca:/data/mitmproxy jectguard
#
# /data/cache holds the fetched feeds, the compiled snapshots and the admin
# token; /data/mitmproxy holds the CA that clients trust. Keep both on volumes:
# a new CA would make every client distrust the proxy. docs/deploy.md has more.
FROM python:3.12-slim

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    JECTGUARD_CACHE_DIR=/data/cache \
    JECTGUARD_CONFDIR=/data/mitmproxy

WORKDIR /app
COPY pyproject.toml README.md ./
COPY proxy_addons ./proxy_addons
COPY blocklists ./blocklists
# The shipped lists stay in /app/blocklists (the commands below name them):
# a plain install does not carry them into site-packages.
RUN pip install . \
 && groupadd --system --gid 10001 jectguard \
 && useradd --system --uid 10001 --gid 10001 --home-dir /data --no-create-home \
        --shell /usr/sbin/nologin jectguard \
 && mkdir -p /data/cache /data/mitmproxy \
 && chown -R 10001:10001 /data \
 && chmod 0700 /data/cache /data/mitmproxy

# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
VOLUME ["/data/cache", "/data/mitmproxy"]
# 8080: the proxy; 8090: admin API, dashboard, /metrics, /healthz, /proxy.pac.
EXPOSE 8080 8090

# The slim image has no curl; Python's urllib answers the same question.
HEALTHCHECK --interval=30s --timeout=5s --start-period=60s --retries=3 \
    CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8090/healthz', timeout=4)"]

ENTRYPOINT ["jectguard"]
# Listens on all of the container's interfaces, but only private networks may
# use the proxy (never an open proxy by accident; loopback is always allowed).
# This one process also refreshes the feeds (--refresh-role refresh).
CMD ["run", \
     "--listen-host", "0.0.0.0", "--listen-port", "8080", \
     "--allow-clients", "10.0.0.0/8", "--allow-clients", "172.16.0.0/12", \
     "--allow-clients", "192.168.0.0/16", "--allow-clients", "fc00::/7", \
     "--admin-host", "0.0.0.0", "--admin-port", "8090", \
     "--confdir", "/data/mitmproxy", "--cache-dir", "/data/cache", \
     "--sources", "/app/blocklists/sources.toml", \
     "--refresh-role", "refresh"]
