// npcadapt C++ client: header-only, C++17, on msgpack-c (msgpack-cxx 4.x).
//
// Speaks the bridge's MessagePack-RPC over one non-blocking TCP socket (docs/protocol.md).
// Every call sends at once and returns a request id; poll() reads whatever has arrived
// without blocking and completes replies (in any order, matched by msgid); try_take(id)
// hands a finished reply over. No thread is started and no exception leaves poll().
//
//   npcadapt::Client c;
//   c.connect("127.0.0.1", 7777);                     // optional token: connect(host, port, "secret")
//   uint32_t id = c.act("duelist", "player-1", "npc-1", obs);   // obs: std::vector<float>, float[N], ...
//   ... each frame: c.poll(); if (auto r = c.try_take(id)) { npcadapt::Decision d; if (r->decision(d)) ... }
//   c.feedback("player-1", "npc-1", reward, done);   // notification, fire and forget
//
// A dropped connection completes every pending request with Error{-1, "connection lost: ..."};
// the next call or poll() reconnects (at once after a working link drops, then backing off from
// 50 ms doubling up to 500 ms while connecting or the name lookup fails) and sends the token
// again first, holding what was queued behind it until the server has answered the auth.
// Linux/POSIX sockets; a small untested Winsock branch is under _WIN32. Not thread-safe: use one
// Client from one thread.
#pragma once

// msgpack-c needs Boost only for its Boost adaptors; without them it is header-only with no
// dependency. When msgpack has not been included yet, this header turns Boost off; define
// NPCADAPT_MSGPACK_WITH_BOOST (or include <msgpack.hpp> first) to leave that choice to you.
#if !defined(NPCADAPT_MSGPACK_WITH_BOOST) && !defined(MSGPACK_NO_BOOST) && !defined(MSGPACK_SYSDEP_HPP)
#define MSGPACK_NO_BOOST
#endif
#include <msgpack.hpp>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <type_traits>
#include <unordered_map>
#include <utility>
#include <vector>

#ifdef _WIN32
// Untested sketch: link ws2_32 and call WSAStartup(MAKEWORD(2, 2), ...) once before connect().
#ifndef NOMINMAX
#define NOMINMAX
#endif
#include <winsock2.h>
#include <ws2tcpip.h>
#else
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/types.h>
#include <unistd.h>
#endif

namespace npcadapt {

// ---------------------------------------------------------------------------------------
// Error codes: the server's (docs/protocol.md, "Error codes") and -1 for the client's own
// (cannot connect, connection lost, timed out, unknown request id).
enum ErrorCode : int {
    CLIENT_ERROR = -1,
    INVALID_REQUEST = 1,
    METHOD_NOT_FOUND = 2,
    INVALID_PARAMS = 3,
    INTERNAL_ERROR = 4,
    UNAUTHORIZED = 5,
    OVERLOADED = 6,
};

struct Error {
    int code = 0;
    std::string message;
    bool retryable = false;  // true only for OVERLOADED (6): nothing was done, try again later
};

// One decision of `act` / `act_batch` (the result map's keys).
struct Decision {
    uint64_t decision = 0;         // id of this decision (increasing per server)
    int32_t action = -1;           // chosen action id
    std::string action_name;       // actions[action]
    float logp = 0.0f;             // log-probability of the action under the policy used
    float value = 0.0f;            // critic's value estimate
    float entropy = 0.0f;          // entropy of the (masked) action distribution
    uint64_t adapter_version = 0;  // 0 = base policy
};

namespace detail {

inline bool key_is(const msgpack::object& k, const char* s, std::size_t n) noexcept {
    return k.type == msgpack::type::STR && k.via.str.size == n && std::memcmp(k.via.str.ptr, s, n) == 0;
}

inline bool number(const msgpack::object& o, double& out) noexcept {
    switch (o.type) {
        case msgpack::type::FLOAT32:
        case msgpack::type::FLOAT64: out = o.via.f64; return true;
        case msgpack::type::POSITIVE_INTEGER: out = static_cast<double>(o.via.u64); return true;
        case msgpack::type::NEGATIVE_INTEGER: out = static_cast<double>(o.via.i64); return true;
        default: return false;
    }
}

inline bool unsigned_int(const msgpack::object& o, uint64_t& out) noexcept {
    if (o.type != msgpack::type::POSITIVE_INTEGER) return false;
    out = o.via.u64;
    return true;
}

}  // namespace detail

// Fills `out` from a decision map; false when `o` is not a map or a key has the wrong type.
inline bool parse_decision(const msgpack::object& o, Decision& out) noexcept {
    if (o.type != msgpack::type::MAP) return false;
    bool ok = true;
    double x = 0.0;
    for (uint32_t i = 0; i < o.via.map.size; ++i) {
        const msgpack::object& k = o.via.map.ptr[i].key;
        const msgpack::object& v = o.via.map.ptr[i].val;
        if (k.type != msgpack::type::STR) continue;
        switch (k.via.str.size) {  // dispatch on the key's length first: one memcmp per key
            case 8:
                if (detail::key_is(k, "decision", 8)) ok &= detail::unsigned_int(v, out.decision);
                break;
            case 4:
                if (detail::key_is(k, "logp", 4)) { ok &= detail::number(v, x); out.logp = static_cast<float>(x); }
                break;
            case 5:
                if (detail::key_is(k, "value", 5)) { ok &= detail::number(v, x); out.value = static_cast<float>(x); }
                break;
            case 7:
                if (detail::key_is(k, "entropy", 7)) { ok &= detail::number(v, x); out.entropy = static_cast<float>(x); }
                break;
            case 15:
                if (detail::key_is(k, "adapter_version", 15)) ok &= detail::unsigned_int(v, out.adapter_version);
                break;
            case 6:
                if (detail::key_is(k, "action", 6)) {
                    uint64_t a = 0;
                    ok &= detail::unsigned_int(v, a);
                    out.action = static_cast<int32_t>(a);
                }
                break;
            case 11:
                if (detail::key_is(k, "action_name", 11)) {
                    if (v.type == msgpack::type::STR) out.action_name.assign(v.via.str.ptr, v.via.str.size);
                    else ok = false;
                }
                break;
            default: break;
        }
    }
    return ok;
}

// The outcome of one request: a value (owning the msgpack zone it lives in) or an Error.
// Move-only; value() stays valid as long as the Result lives.
class Result {
public:
    Result() = default;

    static Result failure(int code, std::string message) {
        Result r;
        r.ok_ = false;
        r.error_.code = code;
        r.error_.message = std::move(message);
        r.error_.retryable = (code == OVERLOADED);
        return r;
    }
    static Result success(msgpack::object_handle&& handle, const msgpack::object& value) {
        Result r;
        r.ok_ = true;
        r.value_ = value;  // points into handle's zone, which moves along (heap-allocated)
        r.handle_ = std::move(handle);
        return r;
    }

    bool ok() const noexcept { return ok_; }
    explicit operator bool() const noexcept { return ok_; }
    const Error& error() const noexcept { return error_; }
    // The result value (nil when !ok()).
    const msgpack::object& value() const noexcept { return value_; }
    bool is_nil() const noexcept { return value_.type == msgpack::type::NIL; }

    // msgpack-c conversion: as<int>(), as<std::map<std::string, msgpack::object>>(), ... (throws msgpack::type_error).
    template <class T> T as() const { return value_.as<T>(); }
    // The same without exceptions.
    template <class T> bool convert_to(T& out) const noexcept {
        try {
            value_.convert(out);
            return true;
        } catch (...) {
            return false;
        }
    }

    // For act: the decision.
    bool decision(Decision& out) const noexcept { return ok_ && parse_decision(value_, out); }
    // For act_batch: the decisions in row order.
    bool decisions(std::vector<Decision>& out) const {
        if (!ok_ || value_.type != msgpack::type::ARRAY) return false;
        out.resize(value_.via.array.size);
        for (uint32_t i = 0; i < value_.via.array.size; ++i)
            if (!parse_decision(value_.via.array.ptr[i], out[i])) return false;
        return true;
    }

private:
    bool ok_ = false;
    Error error_;
    msgpack::object value_;
    msgpack::object_handle handle_;
};

// An observation: a view of the caller's numbers (not copied; must stay valid during the call).
// Sent as float32 little-endian bin (the cheap form) unless made with Obs::list (array of float64).
class Obs {
public:
    enum class Form : uint8_t { Bin, List };

    Obs() = default;
    Obs(const float* data, std::size_t size) : f_(data), size_(size) {}
    Obs(const std::vector<float>& v) : f_(v.data()), size_(v.size()) {}  // NOLINT: implicit on purpose
    template <std::size_t N> Obs(const std::array<float, N>& a) : f_(a.data()), size_(N) {}  // NOLINT
    template <std::size_t N> Obs(const float (&a)[N]) : f_(a), size_(N) {}  // NOLINT

    static Obs list(const float* data, std::size_t size) { Obs o(data, size); o.form_ = Form::List; return o; }
    static Obs list(const double* data, std::size_t size) { Obs o; o.d_ = data; o.size_ = size; o.form_ = Form::List; return o; }
    static Obs list(const std::vector<double>& v) { return list(v.data(), v.size()); }
    static Obs list(const std::vector<float>& v) { return list(v.data(), v.size()); }

    Form form() const noexcept { return form_; }
    std::size_t size() const noexcept { return size_; }
    double at(std::size_t i) const noexcept { return d_ ? d_[i] : static_cast<double>(f_[i]); }
    const float* floats() const noexcept { return f_; }

private:
    const float* f_ = nullptr;
    const double* d_ = nullptr;
    std::size_t size_ = 0;
    Form form_ = Form::Bin;
};

// An action mask (nonzero = allowed), a view of the caller's bytes; empty = no mask.
class Mask {
public:
    Mask() = default;
    Mask(const uint8_t* data, std::size_t size) : p_(data), size_(size) {}
    Mask(const bool* data, std::size_t size) : p_(reinterpret_cast<const uint8_t*>(data)), size_(size) {}
    Mask(const std::vector<uint8_t>& v) : p_(v.data()), size_(v.size()) {}  // NOLINT
    template <std::size_t N> Mask(const std::array<bool, N>& a) : Mask(a.data(), N) {}  // NOLINT
    template <std::size_t N> Mask(const std::array<uint8_t, N>& a) : Mask(a.data(), N) {}  // NOLINT
    template <std::size_t N> Mask(const bool (&a)[N]) : Mask(a, N) {}  // NOLINT

    bool empty() const noexcept { return size_ == 0; }
    std::size_t size() const noexcept { return size_; }
    bool allowed(std::size_t i) const noexcept { return p_[i] != 0; }

private:
    static_assert(sizeof(bool) == 1, "Mask reads bool arrays as bytes");
    const uint8_t* p_ = nullptr;
    std::size_t size_ = 0;
};

// One row of act_batch.
struct ActRow {
    std::string_view player;
    std::string_view npc;
    Obs obs;
    Mask mask;            // optional
    bool greedy = false;  // optional
};

// ---------------------------------------------------------------------------------------
// Codec: how requests are written and responses read. Public so that tools and benchmarks
// measure exactly what the client does.
namespace codec {

using Buffer = msgpack::sbuffer;
using Packer = msgpack::packer<msgpack::sbuffer>;

inline void pack_str(Packer& pk, std::string_view s) {
    pk.pack_str(static_cast<uint32_t>(s.size()));
    pk.pack_str_body(s.data(), static_cast<uint32_t>(s.size()));
}

inline void pack_bin(Packer& pk, const void* data, std::size_t size) {
    pk.pack_bin(static_cast<uint32_t>(size));
    pk.pack_bin_body(static_cast<const char*>(data), static_cast<uint32_t>(size));
}

// Appends bytes as they are (packer has no public raw write; a bin body is exactly that).
inline void write_raw(Packer& pk, const char* bytes, uint32_t n) { pk.pack_bin_body(bytes, n); }

// Always float64 (cb + 8 bytes big-endian), as Python's msgpack writes a float. msgpack-c 4's
// pack_double writes an integral value (1.0, -0.0) as an int instead.
inline void pack_float64(Packer& pk, double d) {
    uint64_t u;
    std::memcpy(&u, &d, 8);
    char b[9];
    b[0] = static_cast<char>(0xcb);
    for (int i = 0; i < 8; ++i) b[1 + i] = static_cast<char>((u >> (56 - 8 * i)) & 0xff);
    write_raw(pk, b, 9);
}

// Always float32 (ca + 4 bytes big-endian); msgpack-c 4's pack_float also shrinks integral values.
inline void pack_float32(Packer& pk, float f) {
    uint32_t u;
    std::memcpy(&u, &f, 4);
    const char b[5] = {static_cast<char>(0xca), static_cast<char>((u >> 24) & 0xff), static_cast<char>((u >> 16) & 0xff),
                       static_cast<char>((u >> 8) & 0xff), static_cast<char>(u & 0xff)};
    write_raw(pk, b, 5);
}

inline void pack_obs(Packer& pk, const Obs& obs) {
    if (obs.form() == Obs::Form::List || obs.floats() == nullptr) {
        pk.pack_array(static_cast<uint32_t>(obs.size()));
        for (std::size_t i = 0; i < obs.size(); ++i) pack_float64(pk, obs.at(i));
        return;
    }
    const uint32_t bytes = static_cast<uint32_t>(obs.size() * 4);
    pk.pack_bin(bytes);
#if defined(_WIN32) || (defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__)
    pk.pack_bin_body(reinterpret_cast<const char*>(obs.floats()), bytes);  // already float32 LE
#else
    for (std::size_t i = 0; i < obs.size(); ++i) {
        uint32_t u;
        std::memcpy(&u, obs.floats() + i, 4);
        const char le[4] = {char(u & 0xff), char((u >> 8) & 0xff), char((u >> 16) & 0xff), char(u >> 24)};
        pk.pack_bin_body(le, 4);
    }
#endif
}

inline void pack_mask(Packer& pk, const Mask& mask) {
    pk.pack_array(static_cast<uint32_t>(mask.size()));
    for (std::size_t i = 0; i < mask.size(); ++i) {
        if (mask.allowed(i)) pk.pack_true();
        else pk.pack_false();
    }
}

// [0, msgid, method, [ ... nparams follow ...
inline void pack_request_head(Packer& pk, uint32_t msgid, std::string_view method, uint32_t nparams) {
    pk.pack_array(4);
    pk.pack_uint8(0);       // pack_uintN write the shortest form (here positive fixint 00)
    pk.pack_uint32(msgid);
    pack_str(pk, method);
    pk.pack_array(nparams);
}

// [2, method, [ ... nparams follow ...
inline void pack_notification_head(Packer& pk, std::string_view method, uint32_t nparams) {
    pk.pack_array(3);
    pk.pack_uint8(2);
    pack_str(pk, method);
    pk.pack_array(nparams);
}

// The act params after the three strings: obs and the options map when there are options.
inline void pack_act_tail(Packer& pk, const Obs& obs, const Mask& mask, bool greedy) {
    pack_obs(pk, obs);
    const uint32_t n = (mask.empty() ? 0u : 1u) + (greedy ? 1u : 0u);
    if (n == 0) return;
    pk.pack_map(n);
    if (!mask.empty()) {
        pack_str(pk, "mask");
        pack_mask(pk, mask);
    }
    if (greedy) {
        pack_str(pk, "greedy");
        pk.pack_true();
    }
}

// A whole act request: [0, msgid, "act", [archetype, player, npc, obs(, options)]].
inline void pack_act(Packer& pk, uint32_t msgid, std::string_view archetype, std::string_view player,
                     std::string_view npc, const Obs& obs, const Mask& mask = {}, bool greedy = false) {
    const bool options = !mask.empty() || greedy;
    pack_request_head(pk, msgid, "act", options ? 5 : 4);
    pack_str(pk, archetype);
    pack_str(pk, player);
    pack_str(pk, npc);
    pack_act_tail(pk, obs, mask, greedy);
}

// Strings and bins up to this size are copied into the message's zone instead of pinning the
// read buffer (a pinned buffer cannot be reused for the next read).
inline bool copy_small(msgpack::type::object_type, std::size_t len, void*) { return len >= 4096; }

// Reads one decoded message; true with msgid and result set when it is a response
// [1, msgid, error, result]. Anything else (the server sends nothing else) is ignored.
inline bool read_response(msgpack::object_handle&& handle, uint32_t& msgid, Result& out) {
    const msgpack::object& m = handle.get();
    if (m.type != msgpack::type::ARRAY || m.via.array.size != 4) return false;
    const msgpack::object* a = m.via.array.ptr;
    if (a[0].type != msgpack::type::POSITIVE_INTEGER || a[0].via.u64 != 1) return false;
    if (a[1].type != msgpack::type::POSITIVE_INTEGER || a[1].via.u64 > 0xffffffffull) return false;
    msgid = static_cast<uint32_t>(a[1].via.u64);
    const msgpack::object& err = a[2];
    if (err.type == msgpack::type::NIL) {
        const msgpack::object value = a[3];
        out = Result::success(std::move(handle), value);
        return true;
    }
    int code = 0;
    std::string message;
    if (err.type == msgpack::type::ARRAY && err.via.array.size >= 1) {
        const msgpack::object& c = err.via.array.ptr[0];
        if (c.type == msgpack::type::POSITIVE_INTEGER) code = static_cast<int>(c.via.u64);
        else if (c.type == msgpack::type::NEGATIVE_INTEGER) code = static_cast<int>(c.via.i64);
        if (err.via.array.size >= 2 && err.via.array.ptr[1].type == msgpack::type::STR)
            message.assign(err.via.array.ptr[1].via.str.ptr, err.via.array.ptr[1].via.str.size);
    } else if (err.type == msgpack::type::STR) {
        message.assign(err.via.str.ptr, err.via.str.size);
    } else {
        message = "malformed error value";
    }
    out = Result::failure(code, std::move(message));
    return true;
}

}  // namespace codec

// ---------------------------------------------------------------------------------------
namespace detail {

#ifdef _WIN32
using socket_t = SOCKET;
constexpr socket_t kNoSocket = INVALID_SOCKET;
constexpr int kSendFlags = 0;
inline int net_errno() { return WSAGetLastError(); }
inline bool would_block(int e) { return e == WSAEWOULDBLOCK; }
inline bool connect_pending(int e) { return e == WSAEWOULDBLOCK || e == WSAEINPROGRESS; }
inline bool interrupted(int e) { return e == WSAEINTR; }
inline void close_socket(socket_t s) { ::closesocket(s); }
inline bool set_nonblocking(socket_t s) { u_long on = 1; return ::ioctlsocket(s, FIONBIO, &on) == 0; }
inline int poll_one(socket_t s, short events, int timeout_ms, short& revents) {
    WSAPOLLFD p{};
    p.fd = s;
    p.events = events;
    int r = ::WSAPoll(&p, 1, timeout_ms);
    revents = p.revents;
    return r;
}
inline std::string error_text(int e) { return "socket error " + std::to_string(e); }
using ssize_type = int;
using len_type = int;
#else
using socket_t = int;
constexpr socket_t kNoSocket = -1;
#ifdef MSG_NOSIGNAL
constexpr int kSendFlags = MSG_NOSIGNAL;  // a closed peer gives EPIPE, not SIGPIPE
#else
constexpr int kSendFlags = 0;  // macOS: SO_NOSIGPIPE is set on the socket instead
#endif
inline int net_errno() { return errno; }
inline bool would_block(int e) { return e == EAGAIN || e == EWOULDBLOCK; }
inline bool connect_pending(int e) { return e == EINPROGRESS; }
inline bool interrupted(int e) { return e == EINTR; }
inline void close_socket(socket_t s) { ::close(s); }
inline bool set_nonblocking(socket_t s) {
    int flags = ::fcntl(s, F_GETFL, 0);
    return flags >= 0 && ::fcntl(s, F_SETFL, flags | O_NONBLOCK) == 0;
}
inline int poll_one(socket_t s, short events, int timeout_ms, short& revents) {
    pollfd p{};
    p.fd = s;
    p.events = events;
    int r = ::poll(&p, 1, timeout_ms);
    revents = p.revents;
    return r;
}
inline std::string error_text(int e) { return std::strerror(e); }
using ssize_type = ssize_t;
using len_type = std::size_t;
#endif

struct Address {
    sockaddr_storage addr{};
    socklen_t len = 0;
};

using Clock = std::chrono::steady_clock;

inline int ms_until(Clock::time_point t, Clock::time_point now) {
    if (t <= now) return 0;
    auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(t - now).count();
    return static_cast<int>(std::min<long long>(ms + 1, 1 << 30));
}

}  // namespace detail

// ---------------------------------------------------------------------------------------
class Client {
public:
    enum class State { Closed, Connecting, Connected, Disconnected };

    struct Config {
        int connect_timeout_ms = 3000;            // connect()'s default wait; also the async connect's limit
        int backoff_min_ms = 50;                  // first reconnect waits this long after a failure
        int backoff_max_ms = 500;                 // doubling up to this
        std::size_t max_send_buffer = 64u << 20;  // bytes queued to send (sent ones dropped first); past it calls fail
        std::size_t read_chunk = 64u << 10;       // bytes asked of recv() at a time
        int max_reads_per_poll = 64;              // bound on recv() calls in one poll()
    };

    Client() : Client(Config{}) {}
    explicit Client(Config config) : cfg_(config) { reset_reader(); }
    ~Client() { close(); }
    Client(const Client&) = delete;
    Client& operator=(const Client&) = delete;

    // Resolves host (blocking: do it at load time; an IP literal never blocks), then connects,
    // waiting up to timeout_ms (-1: config's connect_timeout_ms; 0: do not wait, poll()
    // completes it). With a token, auth(token) is sent first on this and every later
    // connection. Returns whether the socket is connected (with timeout 0: connected or
    // connecting). On false, last_error() says why; the client keeps trying in the background
    // on later calls and poll() (a name that did not resolve is looked up again each time).
    bool connect(const std::string& host, uint16_t port, const std::string& token = std::string(),
                 int timeout_ms = -1) {
        close();
        user_closed_ = false;
        host_ = host;
        port_ = port;
        token_ = token;
        addrs_.clear();
        addr_index_ = 0;
        backoff_ms_ = cfg_.backoff_min_ms;
        start_connect();
        if (state_ == State::Disconnected) return false;  // no address (yet) or refused at once
        if (timeout_ms < 0) timeout_ms = cfg_.connect_timeout_ms;
        if (timeout_ms == 0) return state_ == State::Connecting || state_ == State::Connected;
        const auto deadline = detail::Clock::now() + std::chrono::milliseconds(timeout_ms);
        while (state_ == State::Connecting) {
            const int left = detail::ms_until(deadline, detail::Clock::now());
            if (left == 0) {
                lose_connection("cannot connect to " + where() + ": timed out after " + std::to_string(timeout_ms) + " ms");
                break;
            }
            short rev = 0;
            detail::poll_one(fd_, POLLOUT, left, rev);
            check_connect();
        }
        return state_ == State::Connected;
    }

    // Closes the socket; pending requests complete with Error{-1, "client closed"}. No reconnects
    // until connect() is called again.
    void close() {
        user_closed_ = true;
        if (state_ != State::Closed) {
            drop_socket("client closed");
            state_ = State::Closed;
        }
    }

    State state() const noexcept { return state_; }
    bool connected() const noexcept { return state_ == State::Connected; }
    // Connected and, with a token, the server accepted it.
    bool ready() const noexcept { return state_ == State::Connected && (token_.empty() || authed_); }
    const std::string& last_error() const noexcept { return last_error_; }
    // The socket, for an engine that multiplexes its own sockets (readable: call poll()).
    detail::socket_t native_handle() const noexcept { return fd_; }
    // Requests sent and not yet answered.
    std::size_t in_flight() const noexcept { return waiting_; }

    // -- the bridge's methods: each returns the request id ------------------------------
    uint32_t archetypes() { return call("archetypes"); }

    uint32_t act(std::string_view archetype, std::string_view player, std::string_view npc, const Obs& obs,
                 const Mask& mask = Mask(), bool greedy = false) {
        return request_with("act", [&](codec::Packer& pk, uint32_t id) {
            codec::pack_act(pk, id, archetype, player, npc, obs, mask, greedy);
        });
    }

    uint32_t act_batch(std::string_view archetype, const ActRow* rows, std::size_t n) {
        return request("act_batch", 2, [&](codec::Packer& pk) {
            codec::pack_str(pk, archetype);
            pk.pack_array(static_cast<uint32_t>(n));
            for (std::size_t i = 0; i < n; ++i) {
                const ActRow& r = rows[i];
                const bool options = !r.mask.empty() || r.greedy;
                pk.pack_array(options ? 4 : 3);
                codec::pack_str(pk, r.player);
                codec::pack_str(pk, r.npc);
                codec::pack_act_tail(pk, r.obs, r.mask, r.greedy);
            }
        });
    }
    uint32_t act_batch(std::string_view archetype, const std::vector<ActRow>& rows) {
        return act_batch(archetype, rows.data(), rows.size());
    }

    // Feedback as a notification (fire and forget, the usual way). False when it could not be
    // queued (no connection open or opening, or the send buffer is full): it is dropped, as the
    // server would drop a failing notification. True means queued, not delivered: it is still
    // lost if the connection being opened fails or the link drops before it is written.
    bool feedback(std::string_view player, std::string_view npc, double reward, bool done = false) {
        return notify_with("feedback", 4, [&](codec::Packer& pk) { pack_feedback(pk, player, npc, reward, done); });
    }
    // Feedback as a request: the result is true, or an error naming the problem.
    uint32_t feedback_request(std::string_view player, std::string_view npc, double reward, bool done = false) {
        return request("feedback", 4, [&](codec::Packer& pk) { pack_feedback(pk, player, npc, reward, done); });
    }

    // Probabilities of every action for one row; base = under the base policy.
    uint32_t action_probs(std::string_view archetype, std::string_view player, const Obs& obs, bool base = false) {
        return request("action_probs", base ? 3 : 2, [&](codec::Packer& pk) {
            codec::pack_str(pk, archetype);
            pk.pack_array(1);
            pk.pack_array(2);
            codec::pack_str(pk, player);
            codec::pack_obs(pk, obs);
            if (base) pack_base_option(pk);
        });
    }
    // Many rows: (player, obs) pairs.
    uint32_t action_probs(std::string_view archetype, const std::vector<std::pair<std::string_view, Obs>>& rows,
                          bool base = false) {
        return request("action_probs", base ? 3 : 2, [&](codec::Packer& pk) {
            codec::pack_str(pk, archetype);
            pk.pack_array(static_cast<uint32_t>(rows.size()));
            for (const auto& r : rows) {
                pk.pack_array(2);
                codec::pack_str(pk, r.first);
                codec::pack_obs(pk, r.second);
            }
            if (base) pack_base_option(pk);
        });
    }

    uint32_t adapter_info(std::string_view archetype, std::string_view player) { return call("adapter_info", archetype, player); }
    uint32_t prior_info(std::string_view archetype, std::string_view player) { return call("prior_info", archetype, player); }
    uint32_t reset_player(std::string_view archetype, std::string_view player) { return call("reset_player", archetype, player); }
    uint32_t flush() { return call("flush"); }
    uint32_t stats() { return call("stats"); }

    // Authenticates this connection; once accepted, the token is also sent on reconnects.
    uint32_t auth(std::string_view token) {
        const uint32_t id = call("auth", token);
        auto it = slots_.find(id);
        if (it != slots_.end() && !it->second.done) it->second.auth_token = std::string(token);
        return id;
    }

    // Any method, with params packed by msgpack-c (str, string_view, numbers, bool, vectors,
    // maps, msgpack::object, ...).
    template <class... Args> uint32_t call(std::string_view method, const Args&... params) {
        return request(method, static_cast<uint32_t>(sizeof...(Args)), [&](codec::Packer& pk) {
            (pack_param(pk, params), ...);
            (void)pk;
        });
    }
    // Any method, params written by `pack(codec::Packer&)` (exactly nparams values).
    template <class F> uint32_t request(std::string_view method, uint32_t nparams, F&& pack) {
        return request_with(method, [&](codec::Packer& pk, uint32_t id) {
            codec::pack_request_head(pk, id, method, nparams);
            pack(pk);
        });
    }
    template <class... Args> bool notify(std::string_view method, const Args&... params) {
        return notify_with(method, static_cast<uint32_t>(sizeof...(Args)), [&](codec::Packer& pk) {
            (pack_param(pk, params), ...);
            (void)pk;
        });
    }

    // -- completing requests ---------------------------------------------------------------
    // Sends what is queued and reads what has arrived, never blocking; completes replies and
    // reconnects after a loss (when the backoff allows). Returns how many requests completed.
    // Never throws. Call it once per frame (or more).
    int poll() noexcept {
        int completed = 0;
        try {
            completed_ = 0;
            pump();
            completed = completed_;
        } catch (const std::exception& e) {
            completed = completed_;
            fail_safely(std::string("connection lost: client error: ") + e.what());
        } catch (...) {
            completed = completed_;
            fail_safely("connection lost: client error");
        }
        return completed;
    }

    // The result of request `id` once it is complete (then forgotten), nullopt while it is
    // pending. An id the client does not know (taken already, discarded) gives an Error -1.
    std::optional<Result> try_take(uint32_t id) {
        auto it = slots_.find(id);
        if (it == slots_.end()) return Result::failure(CLIENT_ERROR, "unknown request id " + std::to_string(id));
        if (!it->second.done) return std::nullopt;
        Result r = std::move(it->second.result);
        slots_.erase(it);
        return r;
    }
    bool is_done(uint32_t id) const {
        auto it = slots_.find(id);
        return it == slots_.end() || it->second.done;
    }
    // Forget a request: its reply is dropped when it comes.
    void discard(uint32_t id) {
        auto it = slots_.find(id);
        if (it == slots_.end()) return;
        if (!it->second.done) --waiting_;
        slots_.erase(it);
    }

    // Blocking convenience for tools and tests (never on a game thread): polls until `id`
    // completes or timeout_ms passes; on timeout the request is discarded and an Error -1
    // "timed out" returned.
    Result wait(uint32_t id, int timeout_ms) {
        const auto deadline = detail::Clock::now() + std::chrono::milliseconds(timeout_ms);
        for (;;) {
            poll();
            if (auto r = try_take(id)) return std::move(*r);
            const auto now = detail::Clock::now();
            if (now >= deadline) {
                discard(id);
                return Result::failure(CLIENT_ERROR, "timed out after " + std::to_string(timeout_ms) + " ms");
            }
            wait_io(std::min(detail::ms_until(deadline, now), 50));
        }
    }

    // Blocks up to timeout_ms until the socket has something for poll() (bytes to read, room
    // to write queued bytes, a connect finishing) or a reconnect is due.
    void wait_io(int timeout_ms) {
        if (fd_ == detail::kNoSocket) {
            int ms = timeout_ms;
            if (state_ == State::Disconnected) ms = std::min(ms, detail::ms_until(next_attempt_, detail::Clock::now()));
            if (ms > 0) {
#ifdef _WIN32
                ::Sleep(static_cast<DWORD>(ms));
#else
                ::poll(nullptr, 0, ms);
#endif
            }
            return;
        }
        short events = POLLIN;
        if (state_ == State::Connecting || sent_ < send_limit()) events |= POLLOUT;
        short rev = 0;
        detail::poll_one(fd_, events, timeout_ms, rev);
    }

private:
    struct Slot {
        bool done = false;
        bool internal = false;   // the client's own auth on (re)connect
        std::string auth_token;  // an explicit auth(): remembered when accepted
        Result result;
    };

    std::string where() const { return host_ + ":" + std::to_string(port_); }

    static void pack_feedback(codec::Packer& pk, std::string_view player, std::string_view npc, double reward, bool done) {
        codec::pack_str(pk, player);
        codec::pack_str(pk, npc);
        codec::pack_float64(pk, reward);
        if (done) pk.pack_true();
        else pk.pack_false();
    }
    static void pack_base_option(codec::Packer& pk) {
        pk.pack_map(1);
        codec::pack_str(pk, "base");
        pk.pack_true();
    }

    // Top-level params: strings as str, double as float64 and float as float32 always (msgpack-c
    // would write 1.0 as the int 1), everything else through msgpack-c's adaptors.
    template <class T> static void pack_param(codec::Packer& pk, const T& v) {
        if constexpr (std::is_convertible_v<const T&, std::string_view>) codec::pack_str(pk, std::string_view(v));
        else if constexpr (std::is_same_v<T, float>) codec::pack_float32(pk, v);
        else if constexpr (std::is_floating_point_v<T>) codec::pack_float64(pk, static_cast<double>(v));
        else pk.pack(v);
    }

    uint32_t next_id() {
        uint32_t id = next_id_++;
        while (slots_.count(id)) id = next_id_++;  // an id still held after 2^32 requests: skip it
        return id;
    }

    Slot& add_slot(uint32_t id) {
        Slot& s = slots_[id];
        s = Slot();
        return s;
    }

    void complete(Slot& s, Result&& r) {
        s.done = true;
        s.result = std::move(r);
    }

    // write(pk, id) appends one whole request for `id` to the send buffer.
    template <class F> uint32_t request_with(std::string_view /*method*/, F&& write) {
        const uint32_t id = next_id();
        Slot& slot = add_slot(id);
        if (!link_up()) {
            complete(slot, Result::failure(CLIENT_ERROR, attempted_ ? last_error_ : not_connected_message()));
            return id;
        }
        if (send_buffer_full()) {
            complete(slot, Result::failure(CLIENT_ERROR, "send buffer full (" + std::to_string(out_.size() - sent_) +
                                                             " bytes not taken by the server)"));
            return id;
        }
        codec::Packer pk(out_);
        write(pk, id);
        ++waiting_;
        send_some_safely();
        return id;
    }

    template <class F> bool notify_with(std::string_view method, uint32_t nparams, F&& pack) {
        if (!link_up()) return false;
        if (send_buffer_full()) return false;
        codec::Packer pk(out_);
        codec::pack_notification_head(pk, method, nparams);
        pack(pk);
        send_some_safely();
        return true;
    }

    std::string not_connected_message() const {
        if (state_ == State::Closed) {
            if (host_.empty()) return "not connected: call connect() first";
            return user_closed_ ? "client closed" : "not connected: " + last_error_;
        }
        std::string m = "not connected to " + where();
        if (!last_error_.empty()) m += " (" + last_error_ + ")";
        const int ms = detail::ms_until(next_attempt_, detail::Clock::now());
        m += "; reconnecting in " + std::to_string(ms) + " ms";
        return m;
    }

    // Whether a request can be queued now: connected or connecting, reconnecting first if the
    // link is down and the backoff has passed.
    bool link_up() {
        attempted_ = false;
        if (state_ == State::Disconnected && detail::Clock::now() >= next_attempt_) {
            attempted_ = true;
            start_connect();
        }
        if (state_ == State::Connecting) check_connect();
        return state_ == State::Connected || state_ == State::Connecting;
    }

    bool resolve() {
        addrinfo hints{};
        hints.ai_family = AF_UNSPEC;
        hints.ai_socktype = SOCK_STREAM;
        hints.ai_protocol = IPPROTO_TCP;
        addrinfo* res = nullptr;
        const std::string port = std::to_string(port_);
        const int rc = ::getaddrinfo(host_.c_str(), port.c_str(), &hints, &res);
        if (rc != 0 || res == nullptr) {
#ifdef _WIN32
            last_error_ = "cannot resolve " + host_ + ": error " + std::to_string(rc);
#else
            last_error_ = "cannot resolve " + host_ + ": " + ::gai_strerror(rc);
#endif
            return false;
        }
        for (addrinfo* p = res; p != nullptr; p = p->ai_next) {
            if (p->ai_addrlen > sizeof(sockaddr_storage)) continue;
            detail::Address a;
            std::memcpy(&a.addr, p->ai_addr, p->ai_addrlen);
            a.len = static_cast<socklen_t>(p->ai_addrlen);
            addrs_.push_back(a);
        }
        ::freeaddrinfo(res);
        if (addrs_.empty()) {
            last_error_ = "cannot resolve " + host_ + ": no address";
            return false;
        }
        return true;
    }

    // Opens a socket and starts a non-blocking connect, trying each address that fails at once.
    // Looks the name up first while no address is known (after a failed lookup: again on the
    // backoff schedule).
    void start_connect() {
        if (addrs_.empty() && !resolve()) {
            state_ = State::Disconnected;
            schedule_retry();
            return;
        }
        std::string why;
        for (std::size_t tries = 0; tries < addrs_.size(); ++tries) {
            const detail::Address& a = addrs_[addr_index_ % addrs_.size()];
            detail::socket_t s = ::socket(a.addr.ss_family, SOCK_STREAM, IPPROTO_TCP);
            if (s == detail::kNoSocket) {
                why = detail::error_text(detail::net_errno());
                ++addr_index_;
                continue;
            }
            int one = 1;
            ::setsockopt(s, IPPROTO_TCP, TCP_NODELAY, reinterpret_cast<const char*>(&one), sizeof(one));
#if !defined(_WIN32) && !defined(MSG_NOSIGNAL) && defined(SO_NOSIGPIPE)
            ::setsockopt(s, SOL_SOCKET, SO_NOSIGPIPE, &one, sizeof(one));
#endif
            if (!detail::set_nonblocking(s)) {
                why = detail::error_text(detail::net_errno());
                detail::close_socket(s);
                ++addr_index_;
                continue;
            }
            const int rc = ::connect(s, reinterpret_cast<const sockaddr*>(&a.addr), a.len);
            const int e = rc == 0 ? 0 : detail::net_errno();
            if (rc == 0 || detail::connect_pending(e)) {
                open_socket(s);
                if (rc == 0) on_connected();
                return;
            }
            why = detail::error_text(e);
            detail::close_socket(s);
            ++addr_index_;
        }
        state_ = State::Disconnected;
        last_error_ = "cannot connect to " + where() + ": " + why;
        schedule_retry();
    }

    void open_socket(detail::socket_t s) {
        fd_ = s;
        state_ = State::Connecting;
        connect_started_ = detail::Clock::now();
        authed_ = false;
        empty_out();
        reset_reader();
        if (!token_.empty()) {  // first message of every connection
            const uint32_t id = next_id();
            Slot& slot = add_slot(id);
            slot.internal = true;
            codec::Packer pk(out_);
            codec::pack_request_head(pk, id, "auth", 1);
            codec::pack_str(pk, token_);
            // the rest waits for its answer: before auth the server allows 64 KiB per message
            // and closes the connection on a larger one (a big act_batch queued meanwhile)
            holding_ = true;
            hold_end_ = out_.size();
        }
    }

    void on_connected() {
        state_ = State::Connected;
        send_some_safely();
    }

    // Connecting: finished yet? (non-blocking)
    void check_connect() {
        short rev = 0;
        const int r = detail::poll_one(fd_, POLLOUT, 0, rev);
        if (r > 0) {
            int err = 0;
            socklen_t len = sizeof(err);
            ::getsockopt(fd_, SOL_SOCKET, SO_ERROR, reinterpret_cast<char*>(&err), &len);
            if (err == 0 && !(rev & (POLLERR | POLLHUP))) {
                on_connected();
            } else {
                ++addr_index_;
                lose_connection("cannot connect to " + where() + ": " + detail::error_text(err ? err : ECONNREFUSED));
            }
            return;
        }
        if (detail::Clock::now() - connect_started_ > std::chrono::milliseconds(cfg_.connect_timeout_ms)) {
            ++addr_index_;
            lose_connection("cannot connect to " + where() + ": timed out");
        }
    }

    // After a working connection drops, the first reconnect may start at once; each failure
    // after that waits backoff_min_ms, doubling up to backoff_max_ms.
    void schedule_retry() {
        next_attempt_ = detail::Clock::now() + std::chrono::milliseconds(backoff_ms_);
        const int lo = std::max(cfg_.backoff_min_ms, 1);
        backoff_ms_ = backoff_ms_ <= 0 ? lo : std::min(backoff_ms_ * 2, std::max(cfg_.backoff_max_ms, lo));
    }

    // Closes the socket and completes every pending request with Error{-1, why}.
    void drop_socket(const std::string& why) {
        if (fd_ != detail::kNoSocket) {
            detail::close_socket(fd_);
            fd_ = detail::kNoSocket;
        }
        empty_out();
        holding_ = false;
        authed_ = false;
        reset_reader();
        for (auto it = slots_.begin(); it != slots_.end();) {
            Slot& s = it->second;
            if (s.internal) {
                it = slots_.erase(it);
                continue;
            }
            if (!s.done) complete(s, Result::failure(CLIENT_ERROR, why));
            ++it;
        }
        waiting_ = 0;
    }

    void lose_connection(const std::string& why) {
        last_error_ = why;
        drop_socket(why);
        state_ = State::Disconnected;
        schedule_retry();
    }

    void fail_safely(const std::string& why) noexcept {
        try {
            lose_connection(why);
        } catch (...) {
            if (fd_ != detail::kNoSocket) detail::close_socket(fd_);
            fd_ = detail::kNoSocket;
            state_ = State::Disconnected;
        }
    }

    void reset_reader() { reader_ = std::make_unique<msgpack::unpacker>(&codec::copy_small, nullptr, kBufferSize); }

    // Where sending stops: the end of the queue, or of the automatic auth while it is unanswered.
    std::size_t send_limit() const noexcept { return holding_ ? hold_end_ : out_.size(); }

    // Past max_send_buffer bytes queued (sent bytes dropped first), calls fail at once.
    bool send_buffer_full() {
        out_peak_ = std::max(out_peak_, out_.size());
        if (out_.size() <= cfg_.max_send_buffer) return false;
        compact_out();
        return out_.size() > cfg_.max_send_buffer;
    }

    // Drops the bytes already sent: the unsent tail moves to the front of out_.
    void compact_out() {
        if (sent_ == 0) return;
        const std::size_t left = out_.size() - sent_;
        if (left <= sent_) {  // no overlap: copy within the buffer, which keeps its capacity
            const char* tail = out_.data() + sent_;
            out_.clear();
            out_.write(tail, left);
        } else {
            codec::Buffer rest(std::max<std::size_t>(left, kBufferSize));
            rest.write(out_.data() + sent_, left);
            out_ = std::move(rest);
        }
        if (holding_) hold_end_ -= sent_;
        sent_ = 0;
    }

    // Empties out_; after a huge backlog it gets a small buffer again (the memory goes back).
    void empty_out() {
        if (out_peak_ > kShrinkAbove) out_ = codec::Buffer(kBufferSize);
        else out_.clear();  // keeps its capacity
        out_peak_ = 0;
        sent_ = 0;
        hold_end_ = 0;
    }

    // Writes queued bytes until done or the kernel's buffer is full; false when the link broke.
    bool send_some() {
        out_peak_ = std::max(out_peak_, out_.size());
        const std::size_t limit = send_limit();
        while (sent_ < limit) {
            const std::size_t left = limit - sent_;
            const detail::ssize_type n = ::send(fd_, out_.data() + sent_, static_cast<detail::len_type>(std::min<std::size_t>(left, 1u << 30)),
                                                detail::kSendFlags);
            if (n > 0) {
                sent_ += static_cast<std::size_t>(n);
                continue;
            }
            const int e = detail::net_errno();
            if (n < 0 && detail::interrupted(e)) continue;
            if (n < 0 && detail::would_block(e)) {
                if (sent_ > out_.size() / 2) compact_out();  // a backlog: drop what was sent
                return true;
            }
            lose_connection("connection lost: " + detail::error_text(e));
            return false;
        }
        if (sent_ < out_.size()) {  // held behind the auth
            if (sent_ > out_.size() / 2) compact_out();
            return true;
        }
        empty_out();
        return true;
    }

    void send_some_safely() {
        if (state_ != State::Connected) return;
        send_some();
    }

    void pump() {
        if (state_ == State::Closed) return;
        if (state_ == State::Disconnected) {
            if (detail::Clock::now() < next_attempt_) return;
            start_connect();
        }
        if (state_ == State::Connecting) {
            check_connect();
            if (state_ != State::Connected) return;
        }
        if (!send_some()) return;
        const bool held = holding_;
        read_some();
        if (held && !holding_ && state_ == State::Connected) send_some();  // the auth was answered
    }

    void read_some() {
        for (int i = 0; i < cfg_.max_reads_per_poll && state_ == State::Connected; ++i) {
            reader_->reserve_buffer(cfg_.read_chunk);  // msgpack-c drops a huge message's buffer by itself
            const std::size_t room = reader_->buffer_capacity();
            const detail::ssize_type n = ::recv(fd_, reader_->buffer(), static_cast<detail::len_type>(std::min<std::size_t>(room, 1u << 30)), 0);
            if (n > 0) {
                reader_->buffer_consumed(static_cast<std::size_t>(n));
                drain();
                if (static_cast<std::size_t>(n) < room) return;  // the kernel had no more
                continue;
            }
            const int e = detail::net_errno();
            if (n == 0) {
                lose_connection("connection lost: the server closed the connection");
                return;
            }
            if (detail::interrupted(e)) continue;
            if (detail::would_block(e)) return;
            lose_connection("connection lost: " + detail::error_text(e));
            return;
        }
    }

    void drain() {
        msgpack::object_handle handle;
        while (state_ == State::Connected && reader_->next(handle)) {
            uint32_t id = 0;
            Result r;
            if (!codec::read_response(std::move(handle), id, r)) continue;
            backoff_ms_ = 0;  // the link works: after a loss, reconnect at once
            auto it = slots_.find(id);
            if (it == slots_.end() || it->second.done) continue;  // discarded
            Slot& s = it->second;
            if (s.internal) {  // the client's own auth
                if (r.ok()) authed_ = true;
                else last_error_ = "auth failed: " + r.error().message;
                holding_ = false;  // pump() sends what waited behind it
                slots_.erase(it);
                continue;
            }
            if (!s.auth_token.empty() && r.ok()) {
                token_ = s.auth_token;
                authed_ = true;
            }
            complete(s, std::move(r));
            --waiting_;
            ++completed_;
        }
    }

    Config cfg_;
    State state_ = State::Closed;
    detail::socket_t fd_ = detail::kNoSocket;
    std::string host_;
    uint16_t port_ = 0;
    std::string token_;
    bool authed_ = false;
    std::vector<detail::Address> addrs_;
    std::size_t addr_index_ = 0;
    std::string last_error_;
    int backoff_ms_ = 50;
    bool user_closed_ = false;
    bool attempted_ = false;  // link_up() tried to connect (its error is last_error_)
    detail::Clock::time_point next_attempt_{};
    detail::Clock::time_point connect_started_{};

    uint32_t next_id_ = 1;
    std::unordered_map<uint32_t, Slot> slots_;
    std::size_t waiting_ = 0;
    int completed_ = 0;

    static constexpr std::size_t kBufferSize = 64u << 10;  // initial send / read buffer
    static constexpr std::size_t kShrinkAbove = 1u << 20;  // out_ grown past this shrinks when idle

    codec::Buffer out_{kBufferSize};  // requests not yet taken by the kernel, from sent_ on
    std::size_t sent_ = 0;
    std::size_t out_peak_ = 0;        // out_'s largest size since it was last empty
    bool holding_ = false;            // the automatic auth is unanswered: send nothing past hold_end_
    std::size_t hold_end_ = 0;
    std::unique_ptr<msgpack::unpacker> reader_;
};

}  // namespace npcadapt
