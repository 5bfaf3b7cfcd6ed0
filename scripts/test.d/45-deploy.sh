# Deployment checks (deploy/deploytest, a nested module): the Kubernetes
# manifests render and decode strictly into k8s.io/api types, the Dockerfile
# builds the release binary with `make build`'s command, and the compose demo
# runs end to end behind a real nginx (Debian package, also used by
# 10-nginx.sh).
if [ -z "${KMSGATE_TEST_NGINX:-}" ]; then
  need_pkg nginx
  export KMSGATE_TEST_NGINX=$(command -v nginx || echo /usr/sbin/nginx)
fi
add_module deploy/deploytest
