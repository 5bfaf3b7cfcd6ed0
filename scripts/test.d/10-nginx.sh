# nginx (Debian package) for the forward-auth test against a real nginx.
need_pkg nginx
export KMSGATE_TEST_NGINX=$(command -v nginx || echo /usr/sbin/nginx)
