// Sockets cpp-httplib 0.11 does not expose: a request's connection, to tell whether its client is still there (for
// handlers that wait without writing), found once by its address pair; and the listening socket, to widen its backlog.
#pragma once
#include <string>

namespace mtp::serve {

// The socket of this process connected from (remote_addr, remote_port) to (local_addr, local_port); -1 if none.
int find_connection_fd(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port);
// True when the peer has closed its side (or the socket failed); pending request bytes do not count as closed.
bool peer_closed(int fd);
// Re-listens the socket of this process listening on local_port with the given backlog (the kernel caps it at
// net.core.somaxconn). cpp-httplib 0.11 listens with a backlog of 5: past that, a burst of new connections overflows
// the accept queue and each dropped handshake waits a full second for the client's SYN retransmit. False if none.
bool widen_listen_backlog(int local_port, int backlog);

} // namespace mtp::serve
