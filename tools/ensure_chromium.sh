#!/usr/bin/env bash
# The docs browser test needs Debian's chromium; install it when we can (root with apt), else say so.
set -u
command -v chromium >/dev/null 2>&1 && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "warning: could not install chromium; the docs browser test will be skipped"
else
  echo "note: chromium not found and not root: the docs browser test will be skipped (apt-get install chromium)"
fi
exit 0
