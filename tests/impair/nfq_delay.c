/*
 * nfq_delay: a fixed one-way delay for hosts whose kernel has no sch_netem.
 *
 * Every packet iptables hands to NFQUEUE queue Q is held for D milliseconds and then accepted,
 * first in, first out (a constant delay keeps the order). Only the verdict is delayed: the
 * kernel keeps the packet, we receive its metadata alone (NFQNL_COPY_META). Run it inside the
 * network namespace whose rule feeds the queue (netns.sh does: `ip netns exec NS nfq_delay ...`),
 * and give the rule `--queue-bypass` so that packets pass undelayed whenever no helper listens.
 *
 * Usage: nfq_delay -q QUEUE -d DELAY_MS [-t MAX_SECONDS]
 *   -t bounds the helper's life (default 3600 s); SIGTERM/SIGINT accept what is held and exit.
 * Build: gcc -O2 -Wall -o nfq_delay nfq_delay.c -lnetfilter_queue   (Debian: libnetfilter-queue-dev)
 */
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <poll.h>
#include <arpa/inet.h>
#include <sys/socket.h>
#include <linux/netfilter.h>
#include <libnetfilter_queue/libnetfilter_queue.h>

/* Packets held at once; beyond it a packet is accepted at once (counted as overflow). At
 * 100 Mbit/s and 1 s of delay that is ~8,300 full-size packets; the harness needs far less. */
#define RING 16384

struct held {
	uint32_t id;
	uint64_t due_us;
};

static struct held ring[RING];
static unsigned head, count;
static uint64_t delay_us, passed, overflow;
static volatile sig_atomic_t stop;

static uint64_t now_us(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000u + (uint64_t)ts.tv_nsec / 1000u;
}

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

static int on_packet(struct nfq_q_handle *qh, struct nfgenmsg *msg, struct nfq_data *nfa, void *data)
{
	(void)msg;
	(void)data;
	struct nfqnl_msg_packet_hdr *ph = nfq_get_msg_packet_hdr(nfa);
	if (!ph)
		return 0;
	uint32_t id = ntohl(ph->packet_id);
	if (count == RING) {
		overflow++;
		return nfq_set_verdict(qh, id, NF_ACCEPT, 0, NULL);
	}
	ring[(head + count) % RING] = (struct held){ id, now_us() + delay_us };
	count++;
	return 0;
}

/* Accept every held packet that is due (all of them when `all`). */
static void release(struct nfq_q_handle *qh, int all)
{
	uint64_t now = now_us();
	while (count && (all || ring[head].due_us <= now)) {
		nfq_set_verdict(qh, ring[head].id, NF_ACCEPT, 0, NULL);
		head = (head + 1) % RING;
		count--;
		passed++;
	}
}

int main(int argc, char **argv)
{
	int queue = -1, opt;
	long delay_ms = -1, max_s = 3600;
	while ((opt = getopt(argc, argv, "q:d:t:")) != -1) {
		switch (opt) {
		case 'q': queue = atoi(optarg); break;
		case 'd': delay_ms = atol(optarg); break;
		case 't': max_s = atol(optarg); break;
		default: goto usage;
		}
	}
	if (queue < 0 || queue > 65535 || delay_ms < 0 || delay_ms > 10000 || max_s <= 0)
		goto usage;
	delay_us = (uint64_t)delay_ms * 1000u;

	struct nfq_handle *h = nfq_open();
	if (!h) {
		perror("nfq_open");
		return 1;
	}
	struct nfq_q_handle *qh = nfq_create_queue(h, (uint16_t)queue, on_packet, NULL);
	if (!qh) {
		fprintf(stderr, "nfq_delay: cannot bind queue %d (another listener?)\n", queue);
		nfq_close(h);
		return 1;
	}
	if (nfq_set_mode(qh, NFQNL_COPY_META, 0) < 0 || nfq_set_queue_maxlen(qh, RING) < 0) {
		fprintf(stderr, "nfq_delay: cannot configure queue %d\n", queue);
		return 1;
	}
	int fd = nfq_fd(h);
	int rcvbuf = 8 << 20;
	setsockopt(fd, SOL_SOCKET, SO_RCVBUFFORCE, &rcvbuf, sizeof rcvbuf);

	struct sigaction sa = { .sa_handler = on_signal };
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	fprintf(stderr, "nfq_delay: queue %d, delay %ld ms, pid %d\n", queue, delay_ms, (int)getpid());

	uint64_t end = now_us() + (uint64_t)max_s * 1000000u;
	char buf[4096] __attribute__((aligned));
	while (!stop && now_us() < end) {
		int timeout_ms = 200;
		if (count) {
			uint64_t now = now_us(), due = ring[head].due_us;
			timeout_ms = due <= now ? 0 : (int)((due - now + 999) / 1000);
			if (timeout_ms > 200)
				timeout_ms = 200;
		}
		struct pollfd p = { .fd = fd, .events = POLLIN };
		int r = poll(&p, 1, timeout_ms);
		if (r < 0 && errno != EINTR) {
			perror("poll");
			break;
		}
		if (r > 0) {
			/* Drain what is readable now without blocking. */
			for (int i = 0; i < 256; i++) {
				ssize_t n = recv(fd, buf, sizeof buf, MSG_DONTWAIT);
				if (n < 0) {
					if (errno == ENOBUFS) /* the kernel dropped queue messages; go on */
						continue;
					break;
				}
				nfq_handle_packet(h, buf, (int)n);
			}
		}
		release(qh, 0);
	}
	release(qh, 1);
	fprintf(stderr, "nfq_delay: exit; %llu packets delayed, %llu passed undelayed (ring full)\n",
		(unsigned long long)passed, (unsigned long long)overflow);
	nfq_destroy_queue(qh);
	nfq_close(h);
	return 0;

usage:
	fprintf(stderr, "usage: %s -q QUEUE -d DELAY_MS [-t MAX_SECONDS]\n", argv[0]);
	return 2;
}
