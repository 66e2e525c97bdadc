"""The public listening sockets of a --workers daemon, and which worker a connection goes to.

Owns: binding one SO_REUSEPORT listening socket per worker on the same address (port 0 works:
the first socket picks the port, the others join it), and the kernel rule that picks the
socket of a new connection: a classic BPF program (SO_ATTACH_REUSEPORT_CBPF) hashing the
client's source address, so every connection of one IP lands on the same worker. That is
what makes the per-IP limits (--max-sub-rate bucket, --max-conns-per-ip) hold per daemon
with no state shared between workers: each IP has exactly one worker, whose own limiter is
the daemon's. The main process keeps every socket open for the daemon's life, so a worker
that dies leaves its socket (and the connections queued on it) in place, the group's order
never changes, and the restarted worker takes over the same socket and the same IPs.
It must never accept connections (workers do) or look at anything but the source address.
"""
from __future__ import annotations

import ctypes
import logging
import socket
import struct

log = logging.getLogger(__name__)

SO_ATTACH_REUSEPORT_CBPF = getattr(socket, "SO_ATTACH_REUSEPORT_CBPF", 51)
LISTEN_BACKLOG = 1024

# Classic BPF opcodes (linux/filter.h) and the offset that reads from the network header.
_BPF_LD_W_ABS = 0x00 | 0x00 | 0x20
_BPF_LD_B_ABS = 0x00 | 0x10 | 0x20
_BPF_ALU_RSH_K = 0x04 | 0x70 | 0x00
_BPF_ALU_MUL_K = 0x04 | 0x20 | 0x00
_BPF_ALU_MOD_K = 0x04 | 0x90 | 0x00
_BPF_ALU_XOR_X = 0x04 | 0xA0 | 0x08
_BPF_JMP_JEQ_K = 0x05 | 0x10 | 0x00
_BPF_JMP_JA = 0x05 | 0x00
_BPF_MISC_TAX = 0x07 | 0x00
_BPF_RET_A = 0x06 | 0x10
SKF_NET_OFF = -0x100000
_GOLDEN = 0x9E3779B1  # Knuth's multiplicative hash: spreads neighbouring addresses


def _instruction(code: int, jt: int, jf: int, k: int) -> bytes:
    return struct.pack("HBBI", code, jt, jf, k & 0xFFFFFFFF)


def steering_program(workers: int) -> list[bytes]:
    """BPF returning hash(source address) % workers: the index of the socket that gets the SYN.

    IPv4: the source word (network header + 12). IPv6: the XOR of the four source words
    (+8..+20). The version nibble (first byte >> 4) picks the branch, so a dual-stack
    socket steers both. The kernel indexes the sockets in the order they joined the group.
    """
    net = SKF_NET_OFF
    return [
        _instruction(_BPF_LD_B_ABS, 0, 0, net + 0),      # 0: A = first byte of the IP header
        _instruction(_BPF_ALU_RSH_K, 0, 0, 4),           # 1: A = IP version
        _instruction(_BPF_JMP_JEQ_K, 2, 0, 6),           # 2: IPv6 -> 5, else -> 3
        _instruction(_BPF_LD_W_ABS, 0, 0, net + 12),     # 3: A = IPv4 source address
        _instruction(_BPF_JMP_JA, 0, 0, 10),             # 4: -> 15
        _instruction(_BPF_LD_W_ABS, 0, 0, net + 8),      # 5: IPv6 source, word 0
        _instruction(_BPF_MISC_TAX, 0, 0, 0),            # 6: X = A
        _instruction(_BPF_LD_W_ABS, 0, 0, net + 12),     # 7: word 1
        _instruction(_BPF_ALU_XOR_X, 0, 0, 0),           # 8: A ^= X
        _instruction(_BPF_MISC_TAX, 0, 0, 0),            # 9
        _instruction(_BPF_LD_W_ABS, 0, 0, net + 16),     # 10: word 2
        _instruction(_BPF_ALU_XOR_X, 0, 0, 0),           # 11
        _instruction(_BPF_MISC_TAX, 0, 0, 0),            # 12
        _instruction(_BPF_LD_W_ABS, 0, 0, net + 20),     # 13: word 3
        _instruction(_BPF_ALU_XOR_X, 0, 0, 0),           # 14
        _instruction(_BPF_ALU_MUL_K, 0, 0, _GOLDEN),     # 15: A *= golden (mod 2^32)
        _instruction(_BPF_ALU_RSH_K, 0, 0, 16),          # 16: the well-mixed high bits
        _instruction(_BPF_ALU_MOD_K, 0, 0, workers),     # 17: A %= workers
        _instruction(_BPF_RET_A, 0, 0, 0),               # 18: socket index
    ]


def worker_of_address(address: str, workers: int) -> int:
    """The worker index the steering program picks for an IPv4 address (tests, docs)."""
    word = struct.unpack(">I", socket.inet_aton(address))[0]
    return (((word * _GOLDEN) & 0xFFFFFFFF) >> 16) % workers


def attach_steering(sock: socket.socket, workers: int) -> None:
    """Attach steering_program to the reuseport group `sock` belongs to."""
    code = b"".join(steering_program(workers))
    buffer = ctypes.create_string_buffer(code)
    fprog = struct.pack("HL", len(code) // 8, ctypes.addressof(buffer))
    sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_REUSEPORT_CBPF, fprog)


def bind_worker_sockets(host: str, port: int, workers: int, *, steer_by_ip: bool) -> list[socket.socket]:
    """`workers` listening sockets on host:port (port 0: one port picked for all), in group order.

    Each is listening before the next binds (Linux lets a port-0 socket's port be joined
    only once it listens). `steer_by_ip` attaches the one-IP-one-worker program; without
    it the kernel spreads connections by a hash of both ends' addresses and ports.
    """
    family, _, _, _, address = socket.getaddrinfo(host or None, port, type=socket.SOCK_STREAM,
                                                  flags=socket.AI_PASSIVE)[0]
    sockets: list[socket.socket] = []
    try:
        for _ in range(workers):
            sock = socket.socket(family, socket.SOCK_STREAM)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(LISTEN_BACKLOG)
            sock.set_inheritable(True)
            address = sock.getsockname()  # the port picked by the first, for the others
        if steer_by_ip:
            try:
                attach_steering(sockets[0], workers)
            except OSError as exc:  # a kernel or sandbox without reuseport BPF: serve anyway, say what is lost
                steer_by_ip = False
                log.warning("event=worker_steering_unavailable error=%r effect=per_ip_limits_hold_per_worker", str(exc))
    except BaseException:
        for sock in sockets:
            sock.close()
        raise
    log.info("event=worker_sockets_bound host=%s port=%d workers=%d steer_by_ip=%s",
             address[0], address[1], workers, steer_by_ip)
    return sockets
