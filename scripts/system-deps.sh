#!/usr/bin/env bash
# Debian packages the tests and the demo need. Installed when run as root,
# otherwise reported with the command that installs them.
set -eu
# program -> Debian package providing it
PROGRAMS="mosquitto:mosquitto mosquitto_passwd:mosquitto mosquitto_sub:mosquitto-clients socat:socat openssl:openssl pg_ctlcluster:postgresql chromium:chromium chromedriver:chromium-driver"
missing=""
for pair in $PROGRAMS; do
  prog=${pair%%:*}; pkg=${pair##*:}
  if ! command -v "$prog" >/dev/null 2>&1 && [ ! -x "/usr/sbin/$prog" ]; then
    case " $missing " in *" $pkg "*) ;; *) missing="$missing $pkg" ;; esac
  fi
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing Debian packages:$missing"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq >/dev/null
  # shellcheck disable=SC2086
  apt-get install -y -qq --no-install-recommends $missing >/dev/null
  exit 0
fi
echo "error: missing Debian packages:$missing" >&2
echo "       install them with: sudo apt-get install$missing" >&2
exit 1
