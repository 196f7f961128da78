// Atomic whole-file write (temp + fsync-free rename; the rename is the commit point).
#include "io/atomic_file.h"

#include <cstdio>
#include <fstream>
#include <unistd.h>

#include "core/error.h"

namespace mtp {

void write_file_atomic(const std::string& path, const std::string& contents) {
    std::string tmp = path + ".tmp." + std::to_string(getpid());
    {
        std::ofstream f(tmp, std::ios::binary | std::ios::trunc);
        if (!f) fail(path, "cannot open for writing");
        f.write(contents.data(), std::streamsize(contents.size()));
        f.flush();
        if (!f) {
            std::remove(tmp.c_str());
            fail(path, "write failed");
        }
    }
    if (std::rename(tmp.c_str(), path.c_str()) != 0) {
        std::remove(tmp.c_str());
        fail(path, "cannot rename temp file into place");
    }
}

} // namespace mtp
