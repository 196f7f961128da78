// Sockets httplib hides: a connection by its address pair with an EOF peek (client gone), and the listening socket.
#include "serve/peer.h"

#include <arpa/inet.h>
#include <cerrno>
#include <cstdlib>
#include <dirent.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/stat.h>

namespace mtp::serve {

namespace {
bool addr_of(const sockaddr_storage& ss, std::string& host, int& port) {
    char b[INET6_ADDRSTRLEN] = {};
    if (ss.ss_family == AF_INET) {
        const auto* a = reinterpret_cast<const sockaddr_in*>(&ss);
        if (!inet_ntop(AF_INET, &a->sin_addr, b, sizeof b)) return false;
        port = ntohs(a->sin_port);
    } else if (ss.ss_family == AF_INET6) {
        const auto* a = reinterpret_cast<const sockaddr_in6*>(&ss);
        if (!inet_ntop(AF_INET6, &a->sin6_addr, b, sizeof b)) return false;
        port = ntohs(a->sin6_port);
    } else {
        return false;
    }
    host = b;
    return true;
}
} // namespace

namespace {
// Calls f(fd) for each socket this process holds until f returns true; returns that fd, or -1.
template <class F> int find_socket(F f) {
    DIR* d = opendir("/proc/self/fd");
    if (!d) return -1;
    int found = -1;
    while (dirent* e = readdir(d)) {
        char* end = nullptr;
        const long fd = std::strtol(e->d_name, &end, 10);
        if (!end || *end || fd < 0) continue;
        struct stat st;
        if (fstat(int(fd), &st) != 0 || !S_ISSOCK(st.st_mode)) continue;
        if (f(int(fd))) {
            found = int(fd);
            break;
        }
    }
    closedir(d);
    return found;
}
} // namespace

int find_connection_fd(const std::string& local_addr, int local_port, const std::string& remote_addr, int remote_port) {
    return find_socket([&](int fd) {
        sockaddr_storage ls{}, rs{};
        socklen_t ll = sizeof ls, rl = sizeof rs;
        if (getsockname(fd, reinterpret_cast<sockaddr*>(&ls), &ll) != 0) return false;
        if (getpeername(fd, reinterpret_cast<sockaddr*>(&rs), &rl) != 0) return false;
        std::string lh, rh;
        int lp = 0, rp = 0;
        if (!addr_of(ls, lh, lp) || !addr_of(rs, rh, rp)) return false;
        return lp == local_port && rp == remote_port && lh == local_addr && rh == remote_addr;
    });
}

bool widen_listen_backlog(int local_port, int backlog) {
    // Every listening socket on the port (SO_REUSEPORT would allow more than one), each re-listened.
    bool any = false;
    find_socket([&](int s) {
        int listening = 0;
        socklen_t n = sizeof listening;
        if (getsockopt(s, SOL_SOCKET, SO_ACCEPTCONN, &listening, &n) != 0 || !listening) return false;
        sockaddr_storage ls{};
        socklen_t ll = sizeof ls;
        std::string lh;
        int lp = 0;
        if (getsockname(s, reinterpret_cast<sockaddr*>(&ls), &ll) == 0 && addr_of(ls, lh, lp) && lp == local_port &&
            ::listen(s, backlog) == 0)
            any = true;
        return false;                                   // keep looking
    });
    return any;
}

bool peer_closed(int fd) {
    if (fd < 0) return false;
    char c;
    const ssize_t n = recv(fd, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    if (n == 0) return true;
    if (n > 0) return false;
    return errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR;
}

} // namespace mtp::serve
