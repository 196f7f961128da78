// Whether the client of an HTTP request is still there, for handlers that wait without writing (non-streaming
// completions): cpp-httplib 0.11 does not expose a request's socket, so it is found once by its address pair.
#pragma once
#include <string>

namespace mtp::serve {

// The socket of this process connected from (remote_addr, remote_port) to (local_addr, local_port); -1 if none.
int find_connection_fd(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port);
// True when the peer has closed its side (or the socket failed); pending request bytes do not count as closed.
bool peer_closed(int fd);

} // namespace mtp::serve
