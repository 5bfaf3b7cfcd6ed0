#!/usr/bin/env bash
# Load benchmark of `kmsgate serve` on loopback, every figure measured in the
# same run on the same machine so that ratios are comparable:
#   - JWKS throughput against nginx serving the same bytes as a static file,
#     same wrk settings and connection count; p99 latency at 64 connections;
#   - sign API tokens/s (PEM key) against a bare ecdsa.Sign loop on all cores;
#   - resident memory of an idle `kmsgate serve`;
#   - reverse proxy with a warm assertion cache against nginx proxy_pass and
#     Caddy reverse_proxy to the same upstream (an nginx of its own), the
#     three interleaved, req/s and p99 at 64 connections; and the p50 it adds
#     over a direct request (1 conn);
#   - backend signatures in a run with 100 distinct users and 5 min
#     assertions (USERS_SECONDS, default 60).
# Usage: scripts/bench.sh [seconds per wrk run, default 10]
# WRK_THREADS (default 2) sets wrk's threads for every run.
# kmsgate's /metrics and /readyz are read on its admin listener (--admin-listen).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DUR=${1:-10}
CONNS=64
THREADS=${WRK_THREADS:-2}
W=$(mktemp -d "${TMPDIR:-/tmp}/kmsgate-bench.XXXXXX")
chmod 755 "$W"
trap 'run_cleanups; rm -rf "$W"' EXIT
need_pkg nginx caddy wrk curl

echo "== building kmsgate" >&2
CGO_ENABLED=0 go build -trimpath -o "$W/kmsgate" ./cmd/kmsgate
"$W/kmsgate" genkey > "$W/key.pem"
mkdir -p "$W/www/.well-known"
"$W/kmsgate" jwks --key "file://$W/key.pem" | tr -d '\n' > "$W/www/.well-known/jwks.json"
chmod -R a+rX "$W/www"

NGINX_PORT=$(free_port)
UP_PORT=$(free_port)
NPROXY_PORT=$(free_port)
cat > "$W/nginx.conf" <<CONF
worker_processes auto;
pid $W/nginx.pid;
error_log $W/nginx-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/tmp-body;
  proxy_temp_path $W/tmp-proxy;
  fastcgi_temp_path $W/tmp-fcgi;
  uwsgi_temp_path $W/tmp-uwsgi;
  scgi_temp_path $W/tmp-scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$NGINX_PORT;
    location = /.well-known/jwks.json {
      root $W/www;
      default_type application/json;
      add_header Cache-Control "public, max-age=300";
      add_header Access-Control-Allow-Origin "*";
    }
  }
  # nginx as the reference reverse proxy to the app (its own process below).
  upstream app { server 127.0.0.1:$UP_PORT; keepalive 128; }
  server {
    listen 127.0.0.1:$NPROXY_PORT;
    location / {
      proxy_pass http://app;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
    }
  }
}
CONF
# The app behind the three proxies, a small fixed answer, in its own nginx: in
# the same nginx as the reference proxy, a worker could answer its own upstream
# requests in-process, a shortcut no proxy in front of a separate app has.
mkdir -p "$W/app"
cat > "$W/app.conf" <<CONF
worker_processes auto;
pid $W/app/nginx.pid;
error_log $W/app/error.log;
events { worker_connections 4096; }
http {
  access_log off;
  client_body_temp_path $W/app/tmp-body;
  proxy_temp_path $W/app/tmp-proxy;
  fastcgi_temp_path $W/app/tmp-fcgi;
  uwsgi_temp_path $W/app/tmp-uwsgi;
  scgi_temp_path $W/app/tmp-scgi;
  keepalive_requests 1000000;
  server {
    listen 127.0.0.1:$UP_PORT;
    location / { default_type text/plain; return 200 "hello from the app\n"; }
  }
}
CONF
nginx -c "$W/nginx.conf" -p "$W" -g 'daemon off;' &
NGINX_PID=$!
add_cleanup "kill $NGINX_PID"
nginx -c "$W/app.conf" -p "$W/app" -g 'daemon off;' &
APP_PID=$!
add_cleanup "kill $APP_PID"

# Caddy reverse_proxy to the same app, as a plain process: HTTP only (no
# automatic HTTPS), no admin endpoint, no autosaved config, no access log,
# kept-alive upstream connections (idle pool as large as nginx's keepalive);
# HOME and XDG dirs in $W so that it writes nothing outside (its PKI code makes
# $HOME/.step at start). JSON rather than a Caddyfile: Caddy 2.6's Caddyfile
# has no persist_config.
CADDY_PORT=$(free_port)
mkdir -p "$W/caddy/home" "$W/caddy/data" "$W/caddy/config"
cat > "$W/caddy.json" <<CONF
{
  "admin": {"disabled": true, "config": {"persist": false}},
  "storage": {"module": "file_system", "root": "$W/caddy/data"},
  "apps": {"http": {"grace_period": "1s", "servers": {"proxy": {
    "listen": ["127.0.0.1:$CADDY_PORT"],
    "automatic_https": {"disable": true},
    "routes": [{"handle": [{
      "handler": "reverse_proxy",
      "upstreams": [{"dial": "127.0.0.1:$UP_PORT"}],
      "transport": {"protocol": "http", "keep_alive": {"enabled": true, "idle_timeout": "5m", "max_idle_conns": 128, "max_idle_conns_per_host": 128}}
    }]}]
  }}}}
}
CONF
HOME="$W/caddy/home" XDG_DATA_HOME="$W/caddy/data" XDG_CONFIG_HOME="$W/caddy/config" \
  caddy run --config "$W/caddy.json" 2> "$W/caddy.log" &
CADDY_PID=$!
add_cleanup "kill $CADDY_PID"

KG_PORT=$(free_port)
KG_ADMIN_PORT=$(free_port)
TOKEN=bench-$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
HASH=$(printf %s "$TOKEN" | sha256sum | cut -d' ' -f1)
cat > "$W/kmsgate.yaml" <<CONF
clients:
  - name: bench
    token-sha256: $HASH
    audiences: ["*"]
    subjects: ["*"]
    max-ttl: 1h
CONF
"$W/kmsgate" serve --listen "127.0.0.1:$KG_PORT" --admin-listen "127.0.0.1:$KG_ADMIN_PORT" --issuer "http://127.0.0.1:$KG_PORT" \
  --key "file://$W/key.pem" --config "$W/kmsgate.yaml" --log-level warn \
  --upstream "http://127.0.0.1:$UP_PORT" --identity headers --trusted-proxy 127.0.0.1 --allow any-authenticated --assertion-ttl 5m \
  --audit-log "$W/audit.log" \
  2> "$W/kmsgate.log" &
KG_PID=$!
add_cleanup "kill $KG_PID"
wait_for_http "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json"
wait_for_http "http://127.0.0.1:$UP_PORT/"
wait_for_http "http://127.0.0.1:$CADDY_PORT/"
wait_for_http "http://127.0.0.1:$KG_ADMIN_PORT/readyz"
cmp <(curl -s "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json") <(curl -s "http://127.0.0.1:$KG_PORT/.well-known/jwks.json") \
  || { echo "nginx and kmsgate serve different bytes" >&2; exit 1; }
[ "$(curl -fs "http://127.0.0.1:$CADDY_PORT/")" = "hello from the app" ] \
  || { echo "caddy does not answer with the app's body" >&2; exit 1; }

# Idle memory, before any load.
sleep 2
RSS_KB=$(awk '/VmRSS/ {print $2}' /proc/$KG_PID/status)

cat > "$W/sign.lua" <<LUA
wrk.method = "POST"
wrk.body = '{"claims":{"sub":"alice","aud":"bench"},"ttl":"5m"}'
wrk.headers["Content-Type"] = "application/json"
wrk.headers["Authorization"] = "Bearer $TOKEN"
LUA

# wrk_run URL [script] prints "rps p50_ms p99_ms non2xx".
wrk_run() {
  local out
  out=$(wrk -t$THREADS -c$CONNS -d${DUR}s --latency ${2:+-s "$2"} "$1")
  echo "$out" >> "$W/wrk.log"
  echo "$out" | awk '
    function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; if (v ~ /s$/) return v*1000; return v }
    /Requests\/sec/ {rps=$2}
    /^ +50%/ {p50=ms($2)}
    /^ +99%/ {p99=ms($2)}
    /Non-2xx/ {bad=$NF}
    END {printf "%.0f %.3f %.3f %d\n", rps, p50, p99, bad+0}'
}

echo "== JWKS: nginx and kmsgate, interleaved, ${DUR}s each, $CONNS connections" >&2
wrk -t1 -c8 -d2s "http://127.0.0.1:$KG_PORT/.well-known/jwks.json" >/dev/null   # warm-up
wrk -t1 -c8 -d2s "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json" >/dev/null
read -r N1 NP50a NP99a _ < <(wrk_run "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json")
read -r K1 KP50a KP99a KBADa < <(wrk_run "http://127.0.0.1:$KG_PORT/.well-known/jwks.json")
read -r N2 NP50b NP99b _ < <(wrk_run "http://127.0.0.1:$NGINX_PORT/.well-known/jwks.json")
read -r K2 KP50b KP99b KBADb < <(wrk_run "http://127.0.0.1:$KG_PORT/.well-known/jwks.json")

echo "== sign API: kmsgate POST /v1/sign (PEM key), ${DUR}s, $CONNS connections" >&2
read -r S1 SP50 SP99 SBAD < <(wrk_run "http://127.0.0.1:$KG_PORT/v1/sign" "$W/sign.lua")
echo "== bare ecdsa.Sign on all cores (go test -bench, RunParallel)" >&2
BARE_NS=$(go test -run '^$' -bench '^BenchmarkBareECDSAParallel$' -benchtime "${DUR}s" ./jwks/ | awk '/^BenchmarkBareECDSAParallel/ {print $3}')
BARE_OPS=$(awk -v ns="$BARE_NS" 'BEGIN {printf "%.0f", 1e9/ns}')

echo "== proxy: direct, nginx proxy_pass, caddy reverse_proxy and kmsgate (warm cache, one user), ${DUR}s each" >&2
cat > "$W/user.lua" <<'LUA'
wrk.headers["X-Forwarded-User"] = "alice"
LUA
curl -fs -H 'X-Forwarded-User: alice' -o /dev/null "http://127.0.0.1:$KG_PORT/" # warm the assertion cache
read -r PD _ _ _ < <(wrk_run "http://127.0.0.1:$UP_PORT/")
# Interleaved twice, as for JWKS: one run of each is at the mercy of the
# machine's noise (nginx alone moved by 15% between runs).
read -r PN1 PNP50 PNP99 _ < <(wrk_run "http://127.0.0.1:$NPROXY_PORT/")
read -r PC1 PCP50 PCP99 PCBADa < <(wrk_run "http://127.0.0.1:$CADDY_PORT/")
read -r PK1 PKP50 PKP99 PKBADa < <(wrk_run "http://127.0.0.1:$KG_PORT/" "$W/user.lua")
read -r PN2 PNP50b PNP99b _ < <(wrk_run "http://127.0.0.1:$NPROXY_PORT/")
read -r PC2 PCP50b PCP99b PCBADb < <(wrk_run "http://127.0.0.1:$CADDY_PORT/")
read -r PK2 PKP50b PKP99b PKBADb < <(wrk_run "http://127.0.0.1:$KG_PORT/" "$W/user.lua")
echo "== added latency: one connection, direct and through kmsgate" >&2
CONNS_SAVED=$CONNS; THREADS_SAVED=$THREADS; CONNS=1; THREADS=1
read -r _ LD50 LD99 _ < <(wrk_run "http://127.0.0.1:$UP_PORT/")
read -r _ LK50 LK99 _ < <(wrk_run "http://127.0.0.1:$KG_PORT/" "$W/user.lua")
CONNS=$CONNS_SAVED; THREADS=$THREADS_SAVED

USERS_SECONDS=${USERS_SECONDS:-60}
echo "== 100 distinct users for ${USERS_SECONDS}s through kmsgate (5 min assertions)" >&2
cat > "$W/users.lua" <<'LUA'
local i = 0
request = function()
  i = (i % 100) + 1
  return wrk.format("GET", "/", {["X-Forwarded-User"] = "user-" .. i})
end
LUA
signs() { curl -fs "http://127.0.0.1:$KG_ADMIN_PORT/metrics" | awk '/^kmsgate_sign_duration_seconds_count/ {n += $2} END {print n+0}'; }
SIGNS_BEFORE=$(signs)
wrk -t$THREADS -c$CONNS -d${USERS_SECONDS}s -s "$W/users.lua" "http://127.0.0.1:$KG_PORT/" > "$W/users.out"
SIGNS_AFTER=$(signs)
USERS_REQS=$(awk '/requests in/ {print $1}' "$W/users.out")

AUDIT_LINES=$(wc -l < "$W/audit.log")
ratio() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.2f", a/b}'; }
mean() { awk -v a="$1" -v b="$2" 'BEGIN {printf "%.3f", (a+b)/2}'; }
NG=$(( (N1 + N2) / 2 )); KG=$(( (K1 + K2) / 2 ))
PN=$(( (PN1 + PN2) / 2 )); PK=$(( (PK1 + PK2) / 2 )); PC=$(( (PC1 + PC2) / 2 ))
PNP99M=$(mean "$PNP99" "$PNP99b"); PKP99M=$(mean "$PKP99" "$PKP99b")
cat <<REPORT

kmsgate load benchmark ($(nproc) cores, wrk -t$THREADS -c$CONNS -d${DUR}s, loopback)
JWKS   nginx static file     : $N1 / $N2 req/s (p50 $NP50a / $NP50b ms, p99 $NP99a / $NP99b ms)
JWKS   kmsgate               : $K1 / $K2 req/s (p50 $KP50a / $KP50b ms, p99 $KP99a / $KP99b ms, non-2xx $KBADa / $KBADb)
JWKS   kmsgate / nginx       : $(ratio "$KG" "$NG")   (target >= 0.70; runs $(ratio "$K1" "$N1") and $(ratio "$K2" "$N2"))
JWKS   kmsgate p99 @ $CONNS conns : $KP99a / $KP99b ms   (target <= 5 ms)
sign   kmsgate /v1/sign      : $S1 tokens/s (p50 $SP50 ms, p99 $SP99 ms, non-2xx $SBAD)
sign   bare ecdsa.Sign       : $BARE_OPS signatures/s on all cores ($BARE_NS ns/op)
sign   kmsgate / bare        : $(ratio "$S1" "$BARE_OPS")   (target >= 0.50)
memory idle kmsgate serve RSS: $(( RSS_KB / 1024 )) MiB ($RSS_KB KiB; target < 40 MB)
proxy  app direct            : $PD req/s
proxy  nginx proxy_pass      : $PN1 / $PN2 req/s (p50 $PNP50 / $PNP50b ms, p99 $PNP99 / $PNP99b ms)
proxy  caddy reverse_proxy   : $PC1 / $PC2 req/s (p50 $PCP50 / $PCP50b ms, p99 $PCP99 / $PCP99b ms, non-2xx $PCBADa / $PCBADb)
proxy  kmsgate, warm cache   : $PK1 / $PK2 req/s (p50 $PKP50 / $PKP50b ms, p99 $PKP99 / $PKP99b ms, non-2xx $PKBADa / $PKBADb)
proxy  kmsgate / nginx       : $(ratio "$PK" "$PN")   (target >= 0.55, stretch 0.70; runs $(ratio "$PK1" "$PN1") and $(ratio "$PK2" "$PN2"))
proxy  kmsgate / caddy       : $(ratio "$PK" "$PC")   (target >= 3.0; runs $(ratio "$PK1" "$PC1") and $(ratio "$PK2" "$PC2"))
proxy  p99 @ $CONNS conns kmsgate / nginx : $(ratio "$PKP99M" "$PNP99M")   (mean p99 kmsgate $PKP99M ms, nginx $PNP99M ms)
proxy  p50 at 1 connection   : direct $LD50 ms, kmsgate $LK50 ms, added $(awk -v a="$LK50" -v b="$LD50" 'BEGIN {printf "%.3f", a-b}') ms   (target <= 0.3 ms)
proxy  100 users, ${USERS_SECONDS}s       : $USERS_REQS requests, $((SIGNS_AFTER - SIGNS_BEFORE)) backend signatures   (target <= 100)
audit  records written       : $AUDIT_LINES, one per token signed in the whole run (--audit-log to a file)
REPORT
