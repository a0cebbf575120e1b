/*
 * A stand-in for libgupnp-igd-1.0.so.4 that has no UPnP in it, for running Debian bookworm's
 * simple-whip-client (`whip-client`) in the WHIP tests (tests/whip/publish.sh puts it first on
 * LD_LIBRARY_PATH).
 *
 * Why: whip-client links libsoup-2.4, while webrtcbin's libnice 0.1.21 links
 * libgupnp-igd-1.0 -> libgupnp-1.6 -> libsoup-3.0. When GStreamer loads the nice plugin,
 * libsoup 3's constructor finds libsoup 2's symbols in the process and aborts ("libsoup2 symbols
 * detected. Using libsoup2 and libsoup3 in the same process is not supported."), so the
 * packaged client cannot publish at all. libnice calls only these four functions, and treats a
 * NULL from gupnp_simple_igd_thread_new() as "no UPnP" ("Error creating UPnP Simple IGD agent"),
 * after which it calls none of the others. As a bonus the client sends no SSDP multicast looking
 * for a router: the tests stay on their own addresses.
 *
 * No GLib headers (none are needed, and libglib2.0-dev may be missing): the signatures are
 * those of gupnp-igd 1.x with plain C types.
 */
#include <stddef.h>

void *gupnp_simple_igd_thread_new(void) { return NULL; }

/* G_TYPE_OBJECT (G_TYPE_MAKE_FUNDAMENTAL (20)); only reached through casts of a non-NULL igd. */
unsigned long gupnp_simple_igd_get_type(void) { return 20UL << 2; }

void gupnp_simple_igd_add_port(void *self, const char *protocol, unsigned short external_port,
                               const char *local_ip, unsigned short local_port,
                               unsigned int lease_duration, const char *description) {
  (void)self, (void)protocol, (void)external_port, (void)local_ip, (void)local_port,
      (void)lease_duration, (void)description;
}

void gupnp_simple_igd_remove_port(void *self, const char *protocol, unsigned int external_port) {
  (void)self, (void)protocol, (void)external_port;
}

void gupnp_simple_igd_remove_port_local(void *self, const char *protocol, const char *local_ip,
                                        unsigned short local_port) {
  (void)self, (void)protocol, (void)local_ip, (void)local_port;
}
