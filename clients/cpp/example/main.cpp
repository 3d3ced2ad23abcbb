// Example: one player duels an NPC for a few short episodes through `npcadapt serve`.
//
//   g++ -std=c++17 -O2 -Wall -Wextra -I clients/cpp/include clients/cpp/example/main.cpp -o npcadapt-example
//   ./npcadapt-example 127.0.0.1 7777 [TOKEN]
//
// Written the way a game loop would use the client: every frame it calls poll() (never
// blocks), asks for a decision when the NPC needs one, and picks the answer up on a later
// frame with try_take(). Feedback goes out as a notification.
#include <npcadapt/client.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <thread>
#include <vector>

namespace {

constexpr const char* kArchetype = "duelist";
constexpr const char* kPlayer = "cpp-example-player";
constexpr const char* kNpc = "arena-champion";
constexpr int kEpisodes = 4;
constexpr int kStepsPerEpisode = 12;

// A toy duel. This player mostly attacks high; the NPC earns +1 for blocking the way the
// player is about to strike, -1 when it is hit.
struct Duel {
    uint32_t rng = 12345;
    int step = 0;
    int stance = 0;  // 0 high, 1 low, 2 thrust
    float stamina = 1.0f;

    float random() {
        rng = rng * 1664525u + 1013904223u;
        return static_cast<float>(rng >> 8) / 16777216.0f;
    }
    void reset() {
        step = 0;
        stamina = 1.0f;
        next_stance();
    }
    void next_stance() {
        const float r = random();
        stance = r < 0.7f ? 0 : (r < 0.9f ? 1 : 2);
    }
    // distance(2), player_stance(3), player_stamina(2), round_progress(1)
    void observe(float obs[8]) const {
        const float near = step % 3 == 0 ? 1.0f : 0.0f;
        obs[0] = near;
        obs[1] = 1.0f - near;
        obs[2] = stance == 0 ? 1.0f : 0.0f;
        obs[3] = stance == 1 ? 1.0f : 0.0f;
        obs[4] = stance == 2 ? 1.0f : 0.0f;
        obs[5] = stamina;
        obs[6] = 1.0f - stamina;
        obs[7] = static_cast<float>(step) / kStepsPerEpisode;
    }
    // action ids: attack_high 0, attack_low 1, thrust 2, block_high 3, block_low 4, dodge 5, feint 6, wait 7
    float apply(int action) {
        float reward = 0.0f;
        if ((stance == 0 && action == 3) || (stance == 1 && action == 4) || (stance == 2 && action == 5)) reward = 1.0f;
        else if (action <= 2) reward = 0.2f;  // trading blows
        else reward = -1.0f;                  // hit
        stamina = std::max(0.0f, stamina - 0.05f);
        ++step;
        next_stance();
        return reward;
    }
};

}  // namespace

int main(int argc, char** argv) {
    if (argc < 3 || argc > 4) {
        std::fprintf(stderr, "usage: %s HOST PORT [TOKEN]\n", argv[0]);
        return 2;
    }
    const int port = std::atoi(argv[2]);
    const std::string token = argc == 4 ? argv[3] : "";

    npcadapt::Client client;
    if (!client.connect(argv[1], static_cast<uint16_t>(port), token, 2000)) {
        std::fprintf(stderr, "npcadapt example: %s\n", client.last_error().c_str());
        return 1;
    }

    // Tools may block: wait() is fine here, at load time.
    npcadapt::Result archetypes = client.wait(client.archetypes(), 5000);
    if (!archetypes.ok()) {
        std::fprintf(stderr, "npcadapt example: archetypes failed: %s\n", archetypes.error().message.c_str());
        return 1;
    }
    std::printf("archetypes:");
    for (uint32_t i = 0; i < archetypes.value().via.array.size; ++i) {
        const msgpack::object& a = archetypes.value().via.array.ptr[i];
        for (uint32_t k = 0; k < a.via.map.size; ++k)
            if (a.via.map.ptr[k].key.as<std::string>() == "name")
                std::printf(" %s", a.via.map.ptr[k].val.as<std::string>().c_str());
    }
    std::printf("\n");

    // The game loop.
    Duel duel;
    duel.reset();
    float obs[8];
    int episode = 0;
    float episode_return = 0.0f;
    std::optional<uint32_t> pending;  // the NPC's decision in flight
    npcadapt::Decision decision;
    int failures = 0;
    while (episode < kEpisodes) {
        client.poll();  // once per frame: sends, receives, reconnects; never blocks

        if (!pending) {  // the NPC needs its next move
            duel.observe(obs);
            pending = client.act(kArchetype, kPlayer, kNpc, obs);
        } else if (auto result = client.try_take(*pending)) {
            pending.reset();
            if (!result->decision(decision)) {
                // Server busy (retryable), connection lost (-1), ...: the game falls back to
                // its own behaviour for this frame and asks again.
                std::fprintf(stderr, "act failed (code %d%s): %s\n", result->error().code,
                             result->error().retryable ? ", retryable" : "", result->error().message.c_str());
                if (++failures > 50) return 1;
            } else {
                const float reward = duel.apply(decision.action);
                episode_return += reward;
                const bool done = duel.step >= kStepsPerEpisode;
                client.feedback(kPlayer, kNpc, reward, done);  // fire and forget
                if (done) {
                    std::printf("episode %d: return %+.1f (last action %s, adapter v%llu)\n", episode + 1,
                                static_cast<double>(episode_return), decision.action_name.c_str(),
                                static_cast<unsigned long long>(decision.adapter_version));
                    ++episode;
                    episode_return = 0.0f;
                    duel.reset();
                }
            }
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(1));  // the rest of the frame
    }

    // The adapter the server has for this player (updates arrive in the background, every few
    // completed episodes, so a fresh player may still be on the base policy: version 0).
    npcadapt::Result info = client.wait(client.adapter_info(kArchetype, kPlayer), 5000);
    if (!info.ok()) {
        std::fprintf(stderr, "npcadapt example: adapter_info failed: %s\n", info.error().message.c_str());
        return 1;
    }
    uint64_t version = 0;
    if (!info.is_nil()) {
        for (uint32_t k = 0; k < info.value().via.map.size; ++k)
            if (info.value().via.map.ptr[k].key.as<std::string>() == "version")
                version = info.value().via.map.ptr[k].val.as<uint64_t>();
    }
    std::printf("player %s: adapter version %llu%s\n", kPlayer, static_cast<unsigned long long>(version),
                info.is_nil() ? " (no adapter yet: base policy)" : "");
    client.close();
    return 0;
}
