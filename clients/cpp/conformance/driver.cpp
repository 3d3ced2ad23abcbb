// Conformance driver for the C++ client (clients/CONFORMANCE.md): `driver HOST PORT`, one
// command per stdin line, one JSON line per command on stdout. Uses only the public API.
//
//   g++ -std=c++17 -O2 -Wall -Wextra -I clients/cpp/include clients/cpp/conformance/driver.cpp -o driver
#include <npcadapt/client.hpp>

#include <algorithm>
#include <chrono>
#include <cinttypes>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <iostream>
#include <string>
#include <thread>
#include <vector>

namespace {

using Clock = std::chrono::steady_clock;
constexpr int kTimeoutMs = 10000;

// ---- JSON ------------------------------------------------------------------------------

void json_str(std::string& out, const char* p, std::size_t n) {
    static const char* hex = "0123456789abcdef";
    out += '"';
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(p[i]);
        switch (c) {
            case '"': out += "\\\""; break;
            case '\\': out += "\\\\"; break;
            case '\n': out += "\\n"; break;
            case '\r': out += "\\r"; break;
            case '\t': out += "\\t"; break;
            default:
                if (c < 0x20) {
                    out += "\\u00";
                    out += hex[c >> 4];
                    out += hex[c & 15];
                } else {
                    out += static_cast<char>(c);
                }
        }
    }
    out += '"';
}

void json_str(std::string& out, const std::string& s) { json_str(out, s.data(), s.size()); }

std::string to_hex(const char* p, std::size_t n) {
    static const char* hex = "0123456789abcdef";
    std::string s;
    s.reserve(n * 2);
    for (std::size_t i = 0; i < n; ++i) {
        const unsigned char c = static_cast<unsigned char>(p[i]);
        s += hex[c >> 4];
        s += hex[c & 15];
    }
    return s;
}

void json_double(std::string& out, double d) {
    if (std::isnan(d)) { out += "NaN"; return; }
    if (std::isinf(d)) { out += d > 0 ? "Infinity" : "-Infinity"; return; }
    char buf[40];
    std::snprintf(buf, sizeof buf, "%.17g", d);
    out += buf;
    if (std::strpbrk(buf, ".eE") == nullptr) out += ".0";  // stays a float when parsed back
}

void json_value(std::string& out, const msgpack::object& o);

void json_key(std::string& out, const msgpack::object& k) {
    if (k.type == msgpack::type::STR) {
        json_str(out, k.via.str.ptr, k.via.str.size);
    } else {  // the protocol allows only str/bin keys; write anything else as its JSON text
        std::string text;
        if (k.type == msgpack::type::BIN) text = to_hex(k.via.bin.ptr, k.via.bin.size);
        else json_value(text, k);
        json_str(out, text);
    }
}

void json_value(std::string& out, const msgpack::object& o) {
    char buf[32];
    switch (o.type) {
        case msgpack::type::NIL: out += "null"; break;
        case msgpack::type::BOOLEAN: out += o.via.boolean ? "true" : "false"; break;
        case msgpack::type::POSITIVE_INTEGER:
            std::snprintf(buf, sizeof buf, "%" PRIu64, static_cast<uint64_t>(o.via.u64));
            out += buf;
            break;
        case msgpack::type::NEGATIVE_INTEGER:
            std::snprintf(buf, sizeof buf, "%" PRId64, static_cast<int64_t>(o.via.i64));
            out += buf;
            break;
        case msgpack::type::FLOAT32:
        case msgpack::type::FLOAT64: json_double(out, o.via.f64); break;
        case msgpack::type::STR: json_str(out, o.via.str.ptr, o.via.str.size); break;
        case msgpack::type::BIN:
            out += "{\"$bin\": \"";
            out += to_hex(o.via.bin.ptr, o.via.bin.size);
            out += "\"}";
            break;
        case msgpack::type::ARRAY:
            out += '[';
            for (uint32_t i = 0; i < o.via.array.size; ++i) {
                if (i) out += ", ";
                json_value(out, o.via.array.ptr[i]);
            }
            out += ']';
            break;
        case msgpack::type::MAP:
            out += '{';
            for (uint32_t i = 0; i < o.via.map.size; ++i) {
                if (i) out += ", ";
                json_key(out, o.via.map.ptr[i].key);
                out += ": ";
                json_value(out, o.via.map.ptr[i].val);
            }
            out += '}';
            break;
        case msgpack::type::EXT:
            std::snprintf(buf, sizeof buf, "%d", static_cast<int>(o.via.ext.type()));
            out += "{\"$ext\": [";
            out += buf;
            out += ", \"";
            out += to_hex(o.via.ext.data(), o.via.ext.size);
            out += "\"]}";
            break;
        default: out += "null"; break;
    }
}

void answer_ok(const std::string& result_json) {
    std::string line = "{\"ok\": true, \"result\": " + result_json + "}\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
}

void answer_error(int code, const std::string& message, bool retryable) {
    std::string line = "{\"ok\": false, \"code\": " + std::to_string(code) + ", \"message\": ";
    json_str(line, message);
    line += ", \"retryable\": ";
    line += retryable ? "true" : "false";
    line += "}\n";
    std::fwrite(line.data(), 1, line.size(), stdout);
    std::fflush(stdout);
}

void answer_error(const npcadapt::Error& e) { answer_error(e.code, e.message, e.retryable); }

void answer_result(const npcadapt::Result& r) {
    if (!r.ok()) {
        answer_error(r.error());
        return;
    }
    std::string json;
    json_value(json, r.value());
    answer_ok(json);
}

struct BadCommand {
    std::string message;
};

// ---- tokens ------------------------------------------------------------------------------

std::vector<std::string> split(const std::string& s, char sep) {
    std::vector<std::string> parts;
    std::size_t start = 0;
    for (;;) {
        const std::size_t at = s.find(sep, start);
        if (at == std::string::npos) {
            parts.push_back(s.substr(start));
            return parts;
        }
        parts.push_back(s.substr(start, at - start));
        start = at + 1;
    }
}

double parse_double(const std::string& s) {
    char* end = nullptr;
    errno = 0;
    const double d = std::strtod(s.c_str(), &end);
    if (s.empty() || end != s.c_str() + s.size()) throw BadCommand{"not a number: '" + s + "'"};
    return d;
}

long long parse_int(const std::string& s) {
    char* end = nullptr;
    errno = 0;
    const long long v = std::strtoll(s.c_str(), &end, 10);
    if (s.empty() || end != s.c_str() + s.size() || errno == ERANGE) throw BadCommand{"not a 64-bit int: '" + s + "'"};
    return v;
}

std::size_t parse_count(const std::string& s) {
    const long long v = parse_int(s);
    if (v < 0) throw BadCommand{"not a count: '" + s + "'"};
    return static_cast<std::size_t>(v);
}

std::string from_hex(const std::string& h) {
    if (h == "-") return std::string();
    if (h.size() % 2) throw BadCommand{"odd number of hex digits"};
    auto nibble = [](char c) -> int {
        if (c >= '0' && c <= '9') return c - '0';
        if (c >= 'a' && c <= 'f') return c - 'a' + 10;
        if (c >= 'A' && c <= 'F') return c - 'A' + 10;
        throw BadCommand{std::string("not a hex digit: '") + c + "'"};
    };
    std::string out(h.size() / 2, '\0');
    for (std::size_t i = 0; i < out.size(); ++i)
        out[i] = static_cast<char>(nibble(h[2 * i]) * 16 + nibble(h[2 * i + 1]));
    return out;
}

// Owns the numbers of an OBS token; view() is what the client gets.
struct ObsToken {
    bool list = false;
    std::vector<double> d;
    std::vector<float> f;
    npcadapt::Obs view() const { return list ? npcadapt::Obs::list(d) : npcadapt::Obs(f); }
};

ObsToken parse_obs(const std::string& tok) {
    ObsToken o;
    std::string body;
    if (tok.rfind("list:", 0) == 0) {
        o.list = true;
        body = tok.substr(5);
    } else if (tok.rfind("bin:", 0) == 0) {
        body = tok.substr(4);
    } else {
        throw BadCommand{"OBS must start with list: or bin:, got '" + tok + "'"};
    }
    if (!body.empty())
        for (const std::string& x : split(body, ',')) o.d.push_back(parse_double(x));
    for (double x : o.d) o.f.push_back(static_cast<float>(x));
    return o;
}

bool is_mask(const std::string& tok) { return tok.rfind("mask:", 0) == 0; }

std::vector<uint8_t> parse_mask(const std::string& tok) {
    std::vector<uint8_t> m;
    const std::string body = tok.substr(5);
    if (!body.empty())
        for (const std::string& x : split(body, ',')) m.push_back(parse_int(x) != 0 ? 1 : 0);
    return m;
}

void need(const std::vector<std::string>& t, std::size_t lo, std::size_t hi, const char* usage) {
    if (t.size() < lo || t.size() > hi) throw BadCommand{std::string("usage: ") + usage};
}

// ---- waiting, the way a game loop would: poll every "frame" until the result is there ----

npcadapt::Result await(npcadapt::Client& c, uint32_t id, Clock::time_point deadline) {
    for (;;) {
        c.poll();
        if (auto r = c.try_take(id)) return std::move(*r);
        if (Clock::now() >= deadline) {
            c.discard(id);
            return npcadapt::Result::failure(npcadapt::CLIENT_ERROR, "timed out after 10 s waiting for a reply");
        }
        c.wait_io(1);  // a short sleep that ends early when bytes arrive
    }
}

npcadapt::Result await(npcadapt::Client& c, uint32_t id) {
    return await(c, id, Clock::now() + std::chrono::milliseconds(kTimeoutMs));
}

const msgpack::object* map_get(const msgpack::object& m, const char* key) {
    if (m.type != msgpack::type::MAP) return nullptr;
    const std::size_t n = std::strlen(key);
    for (uint32_t i = 0; i < m.via.map.size; ++i) {
        const msgpack::object& k = m.via.map.ptr[i].key;
        if (k.type == msgpack::type::STR && k.via.str.size == n && std::memcmp(k.via.str.ptr, key, n) == 0)
            return &m.via.map.ptr[i].val;
    }
    return nullptr;
}

// ---- commands ----------------------------------------------------------------------------

void cmd_act(npcadapt::Client& c, const std::vector<std::string>& t) {
    need(t, 5, 7, "act ARCH PLAYER NPC OBS [MASK] [greedy]");
    const ObsToken obs = parse_obs(t[4]);
    std::vector<uint8_t> mask;
    bool greedy = false;
    for (std::size_t i = 5; i < t.size(); ++i) {
        if (is_mask(t[i])) mask = parse_mask(t[i]);
        else if (t[i] == "greedy") greedy = true;
        else throw BadCommand{"expected MASK or greedy, got '" + t[i] + "'"};
    }
    answer_result(await(c, c.act(t[1], t[2], t[3], obs.view(), npcadapt::Mask(mask), greedy)));
}

void cmd_act_batch(npcadapt::Client& c, const std::vector<std::string>& t) {
    need(t, 3, 1u << 20, "act_batch ARCH ROW [ROW ...]");
    const std::size_t n = t.size() - 2;
    std::vector<std::vector<std::string>> fields(n);
    std::vector<ObsToken> obs(n);
    std::vector<std::vector<uint8_t>> masks(n);
    std::vector<npcadapt::ActRow> rows(n);
    for (std::size_t i = 0; i < n; ++i) {
        fields[i] = split(t[i + 2], '|');
        if (fields[i].size() != 3 && fields[i].size() != 4) throw BadCommand{"ROW is PLAYER|NPC|OBS[|MASK]"};
        obs[i] = parse_obs(fields[i][2]);
        if (fields[i].size() == 4) {
            if (!is_mask(fields[i][3])) throw BadCommand{"expected MASK, got '" + fields[i][3] + "'"};
            masks[i] = parse_mask(fields[i][3]);
        }
        rows[i].player = fields[i][0];
        rows[i].npc = fields[i][1];
        rows[i].obs = obs[i].view();
        rows[i].mask = npcadapt::Mask(masks[i]);
    }
    answer_result(await(c, c.act_batch(t[1], rows)));
}

bool parse_done(const std::string& s) {
    if (s == "0") return false;
    if (s == "1") return true;
    throw BadCommand{"DONE must be 0 or 1, got '" + s + "'"};
}

void cmd_feedback(npcadapt::Client& c, const std::vector<std::string>& t, bool wait) {
    need(t, 5, 5, wait ? "feedback_wait PLAYER NPC REWARD DONE" : "feedback PLAYER NPC REWARD DONE");
    const double reward = parse_double(t[3]);
    const bool done = parse_done(t[4]);
    if (wait) {
        answer_result(await(c, c.feedback_request(t[1], t[2], reward, done)));
        return;
    }
    if (c.feedback(t[1], t[2], reward, done)) answer_ok("null");
    else answer_error(npcadapt::CLIENT_ERROR, "feedback not sent: " + c.last_error(), false);
}

void cmd_action_probs(npcadapt::Client& c, const std::vector<std::string>& t) {
    need(t, 4, 5, "action_probs ARCH PLAYER OBS [base]");
    const ObsToken obs = parse_obs(t[3]);
    bool base = false;
    if (t.size() == 5) {
        if (t[4] != "base") throw BadCommand{"expected base, got '" + t[4] + "'"};
        base = true;
    }
    answer_result(await(c, c.action_probs(t[1], t[2], obs.view(), base)));
}

void cmd_pipeline(npcadapt::Client& c, const std::vector<std::string>& t) {
    need(t, 7, 7, "pipeline N ARCH PLAYER NPC OBS MODE");
    const std::size_t n = parse_count(t[1]);
    const ObsToken obs = parse_obs(t[5]);
    const std::string& mode = t[6];
    if (mode != "act" && mode != "mixed") throw BadCommand{"MODE must be act or mixed, got '" + mode + "'"};
    std::vector<uint32_t> ids;
    ids.reserve(n);
    for (std::size_t i = 0; i < n; ++i) {  // all sent before any reply is read
        if (mode == "mixed" && i % 2 == 1) ids.push_back(c.adapter_info(t[2], t[3]));
        else ids.push_back(c.act(t[2], t[3], t[4], obs.view()));
    }
    const auto deadline = Clock::now() + std::chrono::milliseconds(kTimeoutMs);
    std::string json = "[";
    for (std::size_t i = 0; i < n; ++i) {
        npcadapt::Result r = await(c, ids[i], deadline);
        if (!r.ok() && r.error().code == npcadapt::CLIENT_ERROR) {
            for (std::size_t j = i + 1; j < n; ++j) c.discard(ids[j]);
            answer_error(r.error());
            return;
        }
        if (i) json += ", ";
        if (!r.ok()) {
            json += "{\"kind\": \"error\", \"code\": " + std::to_string(r.error().code) +
                    ", \"retryable\": " + (r.error().retryable ? "true" : "false") + "}";
            continue;
        }
        // Classified by what came back, so a reply matched to the wrong request shows.
        const msgpack::object& v = r.value();
        const msgpack::object* decision = map_get(v, "decision");
        if (decision != nullptr) {
            json += "{\"kind\": \"decision\", \"decision\": ";
            json_value(json, *decision);
            json += "}";
        } else if (v.type == msgpack::type::NIL || map_get(v, "player") != nullptr) {
            json += "{\"kind\": \"info\"}";
        } else {
            json += "{\"kind\": \"unexpected\", \"value\": ";
            json_value(json, v);
            json += "}";
        }
    }
    json += "]";
    answer_ok(json);
}

void cmd_act_retry(npcadapt::Client& c, const std::vector<std::string>& t) {
    need(t, 6, 6, "act_retry TRIES ARCH PLAYER NPC OBS");
    const std::size_t tries = parse_count(t[1]);
    const ObsToken obs = parse_obs(t[5]);
    npcadapt::Result last = npcadapt::Result::failure(npcadapt::CLIENT_ERROR, "no attempt made (TRIES = 0)");
    for (std::size_t k = 1; k <= tries; ++k) {
        last = await(c, c.act(t[2], t[3], t[4], obs.view()));
        if (last.ok()) {
            std::string json = "{\"attempts\": " + std::to_string(k) + ", \"decision\": ";
            json_value(json, last.value());
            json += "}";
            answer_ok(json);
            return;
        }
        std::cerr << "act_retry: attempt " << k << " failed: " << last.error().message << "\n";
        std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    answer_error(last.error());
}

void cmd_encode(const std::vector<std::string>& t) {
    need(t, 3, 3, "encode TYPE VALUE");
    const std::string& type = t[1];
    const std::string& v = t[2];
    npcadapt::codec::Buffer buf;
    npcadapt::codec::Packer pk(buf);
    if (type == "nil") {
        pk.pack_nil();
    } else if (type == "bool") {
        if (v == "true") pk.pack_true();
        else if (v == "false") pk.pack_false();
        else throw BadCommand{"bool is true or false"};
    } else if (type == "int") {
        pk.pack_int64(parse_int(v));
    } else if (type == "float32") {
        npcadapt::codec::pack_float32(pk, static_cast<float>(parse_double(v)));  // as Python: the double, rounded
    } else if (type == "float64") {
        npcadapt::codec::pack_float64(pk, parse_double(v));
    } else if (type == "str") {
        npcadapt::codec::pack_str(pk, from_hex(v));
    } else if (type == "bin") {
        const std::string b = from_hex(v);
        npcadapt::codec::pack_bin(pk, b.data(), b.size());
    } else if (type == "array_int") {
        const std::size_t n = parse_count(v);
        pk.pack_array(static_cast<uint32_t>(n));
        for (std::size_t i = 0; i < n; ++i) pk.pack_uint64(i);
    } else if (type == "map_str_int") {
        const std::size_t n = parse_count(v);
        pk.pack_map(static_cast<uint32_t>(n));
        for (std::size_t i = 0; i < n; ++i) {
            npcadapt::codec::pack_str(pk, "k" + std::to_string(i));
            pk.pack_uint64(i);
        }
    } else {
        throw BadCommand{"unknown TYPE '" + type + "'"};
    }
    std::string json;
    json_str(json, to_hex(buf.data(), buf.size()));
    answer_ok(json);
}

void cmd_decode(const std::vector<std::string>& t) {
    need(t, 2, 2, "decode HEX");
    const std::string bytes = from_hex(t[1]);
    msgpack::object_handle oh;
    try {
        oh = msgpack::unpack(bytes.data(), bytes.size());
    } catch (const std::exception& e) {
        answer_error(npcadapt::CLIENT_ERROR, std::string("cannot decode: ") + e.what(), false);
        return;
    }
    std::string json;
    json_value(json, oh.get());
    answer_ok(json);
}

// The observation for ARCH: the duelist's example numbers, cycled to the archetype's length.
std::vector<float> bench_obs(npcadapt::Client& c, const std::string& arch) {
    const float pattern[8] = {0.5f, 0.25f, 1.0f, 0.0f, 0.0f, 0.75f, 0.5f, 0.0f};
    std::size_t dim = 8;
    npcadapt::Result r = await(c, c.archetypes());
    if (r.ok() && r.value().type == msgpack::type::ARRAY) {
        for (uint32_t i = 0; i < r.value().via.array.size; ++i) {
            const msgpack::object& a = r.value().via.array.ptr[i];
            const msgpack::object* name = map_get(a, "name");
            const msgpack::object* features = map_get(a, "observation");
            if (!name || name->type != msgpack::type::STR || name->as<std::string>() != arch || !features ||
                features->type != msgpack::type::ARRAY)
                continue;
            dim = 0;
            for (uint32_t j = 0; j < features->via.array.size; ++j) {
                const msgpack::object* size = map_get(features->via.array.ptr[j], "size");
                if (size && size->type == msgpack::type::POSITIVE_INTEGER) dim += size->via.u64;
            }
        }
    }
    std::vector<float> obs(dim);
    for (std::size_t i = 0; i < dim; ++i) obs[i] = pattern[i % 8];
    return obs;
}

void cmd_bench(npcadapt::Client& c, const std::vector<std::string>& t) {
    need(t, 7, 7, "bench SEQ PIPE CODEC ARCH PLAYER NPC");
    const std::size_t seq = parse_count(t[1]), pipe = parse_count(t[2]), codec_n = parse_count(t[3]);
    const std::string &arch = t[4], &player = t[5], &npc = t[6];
    const std::vector<float> obs = bench_obs(c, arch);
    using us = std::chrono::duration<double, std::micro>;

    // Sequential: one act at a time, each waiting for its reply.
    std::vector<double> rtt;
    rtt.reserve(seq);
    const auto s0 = Clock::now();
    for (std::size_t i = 0; i < seq; ++i) {
        const auto t0 = Clock::now();
        npcadapt::Result r = c.wait(c.act(arch, player, npc, obs), kTimeoutMs);
        rtt.push_back(us(Clock::now() - t0).count());
        if (!r.ok()) {
            answer_error(r.error());
            return;
        }
    }
    const double seq_s = std::chrono::duration<double>(Clock::now() - s0).count();

    // Pipelined: up to 64 in flight.
    std::vector<uint32_t> flight;
    flight.reserve(64);
    std::size_t sent = 0, done = 0;
    const auto p0 = Clock::now();
    const auto deadline = p0 + std::chrono::seconds(120);
    while (done < pipe) {
        while (flight.size() < 64 && sent < pipe) {
            flight.push_back(c.act(arch, player, npc, obs));
            ++sent;
        }
        c.poll();
        bool progressed = false;
        for (std::size_t i = 0; i < flight.size();) {
            if (auto r = c.try_take(flight[i])) {
                if (!r->ok()) {
                    for (uint32_t id : flight) c.discard(id);
                    answer_error(r->error());
                    return;
                }
                flight[i] = flight.back();
                flight.pop_back();
                ++done;
                progressed = true;
            } else {
                ++i;
            }
        }
        if (!progressed) {
            if (Clock::now() > deadline) {
                for (uint32_t id : flight) c.discard(id);
                answer_error(npcadapt::CLIENT_ERROR, "bench: pipelined run timed out", false);
                return;
            }
            c.wait_io(1);
        }
    }
    const double pipe_s = std::chrono::duration<double>(Clock::now() - p0).count();

    // Codec: encode one act request + decode the 100-byte response into a Decision, as the
    // client does it (same packer into a reused buffer, same unpacker path), no socket.
    const std::string response = from_hex(
        "940101c087a86465636973696f6ece00000001a46c6f6770cabf69111ca576616c7565ca3e998751a7656e74726f7079"
        "ca3f97d5d3af616461707465725f76657273696f6ece00000000a6616374696f6e06ab616374696f6e5f6e616d65a5"
        "6665696e74");
    npcadapt::codec::Buffer buf(4096);
    msgpack::unpacker reader(&npcadapt::codec::copy_small, nullptr, 64u << 10);
    msgpack::object_handle handle;
    npcadapt::Decision d;
    uint64_t sink = 0;
    const auto c0 = Clock::now();
    for (std::size_t i = 0; i < codec_n; ++i) {
        buf.clear();
        npcadapt::codec::Packer pk(buf);
        npcadapt::codec::pack_act(pk, static_cast<uint32_t>(i), arch, player, npc, obs);
        sink += buf.size();
        reader.reserve_buffer(response.size());
        std::memcpy(reader.buffer(), response.data(), response.size());
        reader.buffer_consumed(response.size());
        if (!reader.next(handle)) {
            answer_error(npcadapt::CLIENT_ERROR, "bench: codec could not decode the response", false);
            return;
        }
        uint32_t msgid = 0;
        npcadapt::Result r;
        if (!npcadapt::codec::read_response(std::move(handle), msgid, r) || !r.decision(d)) {
            answer_error(npcadapt::CLIENT_ERROR, "bench: codec response is not a decision", false);
            return;
        }
        sink += d.decision + static_cast<uint64_t>(d.action) + msgid;
    }
    const double codec_us = codec_n ? us(Clock::now() - c0).count() / static_cast<double>(codec_n) : 0.0;
    if (codec_n && (d.action != 6 || d.action_name != "feint" || sink == 0)) {
        answer_error(npcadapt::CLIENT_ERROR, "bench: codec decoded the wrong decision", false);
        return;
    }

    std::sort(rtt.begin(), rtt.end());
    auto pct = [&](double q) {
        if (rtt.empty()) return 0.0;
        std::size_t k = static_cast<std::size_t>(std::ceil(q * static_cast<double>(rtt.size())));
        k = std::min(std::max<std::size_t>(k, 1), rtt.size());
        return rtt[k - 1];
    };
    std::string json = "{\"sequential_per_s\": ";
    json_double(json, seq_s > 0 ? static_cast<double>(seq) / seq_s : 0.0);
    json += ", \"pipelined_per_s\": ";
    json_double(json, pipe_s > 0 ? static_cast<double>(pipe) / pipe_s : 0.0);
    json += ", \"p50_us\": ";
    json_double(json, pct(0.50));
    json += ", \"p99_us\": ";
    json_double(json, pct(0.99));
    json += ", \"codec_us\": ";
    json_double(json, codec_us);
    json += "}";
    answer_ok(json);
}

// One command; false at quit.
bool run(npcadapt::Client& c, const std::vector<std::string>& t) {
    const std::string& cmd = t[0];
    if (cmd == "quit") {
        c.close();
        answer_ok("true");
        return false;
    }
    if (cmd == "auth") {
        need(t, 2, 2, "auth TOKEN");
        answer_result(await(c, c.auth(t[1])));
    } else if (cmd == "archetypes") {
        need(t, 1, 1, "archetypes");
        answer_result(await(c, c.archetypes()));
    } else if (cmd == "act") {
        cmd_act(c, t);
    } else if (cmd == "act_batch") {
        cmd_act_batch(c, t);
    } else if (cmd == "feedback") {
        cmd_feedback(c, t, false);
    } else if (cmd == "feedback_wait") {
        cmd_feedback(c, t, true);
    } else if (cmd == "action_probs") {
        cmd_action_probs(c, t);
    } else if (cmd == "adapter_info") {
        need(t, 3, 3, "adapter_info ARCH PLAYER");
        answer_result(await(c, c.adapter_info(t[1], t[2])));
    } else if (cmd == "flush") {
        need(t, 1, 1, "flush");
        answer_result(await(c, c.flush()));
    } else if (cmd == "call") {
        need(t, 2, 2, "call METHOD");
        answer_result(await(c, c.call(t[1])));
    } else if (cmd == "pipeline") {
        cmd_pipeline(c, t);
    } else if (cmd == "act_retry") {
        cmd_act_retry(c, t);
    } else if (cmd == "encode") {
        cmd_encode(t);
    } else if (cmd == "decode") {
        cmd_decode(t);
    } else if (cmd == "bench") {
        cmd_bench(c, t);
    } else {
        throw BadCommand{"unknown command '" + cmd + "'"};
    }
    return true;
}

}  // namespace

int main(int argc, char** argv) {
    if (argc != 3) {
        std::fprintf(stderr, "usage: %s HOST PORT\n", argv[0]);
        return 2;
    }
    const long port = std::strtol(argv[2], nullptr, 10);
    if (port <= 0 || port > 65535) {
        std::fprintf(stderr, "bad port '%s'\n", argv[2]);
        return 2;
    }
    npcadapt::Client client;
    if (!client.connect(argv[1], static_cast<uint16_t>(port)))
        std::fprintf(stderr, "driver: %s%s\n", client.last_error().c_str(),
                     client.state() == npcadapt::Client::State::Disconnected ? " (the client keeps retrying)" : "");

    std::string line;
    while (std::getline(std::cin, line)) {
        while (!line.empty() && (line.back() == '\r' || line.back() == '\n')) line.pop_back();
        if (line.empty()) {
            answer_error(npcadapt::CLIENT_ERROR, "bad command: empty line", false);
            continue;
        }
        client.poll();  // a frame's tick: notices a dropped connection before the command
        try {
            if (!run(client, split(line, ' '))) return 0;
        } catch (const BadCommand& e) {
            answer_error(npcadapt::CLIENT_ERROR, "bad command: " + e.message, false);
        } catch (const std::exception& e) {
            answer_error(npcadapt::CLIENT_ERROR, std::string("driver error: ") + e.what(), false);
        }
    }
    client.close();
    return 0;
}
