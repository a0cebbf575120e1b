#!/bin/sh
# Playwright's `executablePath` for a Chromium that runs inside an impairment namespace
# (netns.sh up NAME): HUIZHEN_IMPAIR_NS names the namespace (hzi-NAME), CHROMIUM_BIN the browser
# (default /usr/bin/chromium). Playwright talks to the browser over a pipe, so the namespace
# changes only the browser's own network: its WebSocket, HTTP and WebRTC all go over the veth.
exec ip netns exec "${HUIZHEN_IMPAIR_NS:?set HUIZHEN_IMPAIR_NS to the namespace}" "${CHROMIUM_BIN:-/usr/bin/chromium}" "$@"
