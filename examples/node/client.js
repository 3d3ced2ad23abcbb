#!/usr/bin/env node
// A game-side client for the npcadapt bridge, in plain Node.js.
//
// It speaks MessagePack-RPC over one TCP socket (`net`), using @msgpack/msgpack for the
// bytes and nothing else: requests [0, msgid, method, params], responses
// [1, msgid, error, result], notifications [2, method, params]. It plays a short
// session with the `duelist` archetype, prints a summary and exits 0; any error
// (connection refused, error response, timeout) exits 1. A failed call rejects with an
// Error carrying the server's `code`; `err.retryable` is true for OVERLOADED (code 6: the
// server shed the call at once, retry later). `require("./client.js").RpcClient` reuses
// the connection class.
//
//   node client.js [HOST] [PORT]          (or NPCADAPT_HOST / NPCADAPT_PORT)
//   EPISODES=4 STEPS=5 PLAYER=node-player-1 node client.js 127.0.0.1 7777
"use strict";

const net = require("node:net");
const { encode, decodeMultiStream } = require("@msgpack/msgpack");

const REQUEST = 0;
const RESPONSE = 1;
const NOTIFICATION = 2;
const CALL_TIMEOUT_MS = 10_000;

const OVERLOADED = 6; // the server shed the call at once and did nothing: retry later

/**
 * The server's error [code, message] as an Error with `code`, `remoteMessage` and
 * `retryable` (true only for OVERLOADED, whose `name` is "OverloadedError").
 */
function remoteError(method, error) {
  const [code, message] = Array.isArray(error) ? error : [0, String(error)];
  const err = new Error(`${method} failed: [${code}] ${message}`);
  err.name = code === OVERLOADED ? "OverloadedError" : "RemoteError";
  err.code = code;
  err.remoteMessage = message;
  err.retryable = code === OVERLOADED;
  return err;
}

/** One MessagePack-RPC connection: many calls in flight, answers matched by msgid. */
class RpcClient {
  constructor(socket) {
    this.socket = socket;
    this.nextId = 0;
    this.pending = new Map(); // msgid -> {resolve, reject, timer, method}
    this.closed = false;
    this.reading = this.readLoop();
  }

  static connect(host, port) {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection({ host, port });
      socket.setNoDelay(true);
      socket.once("connect", () => resolve(new RpcClient(socket)));
      socket.once("error", reject);
    });
  }

  async readLoop() {
    try {
      for await (const msg of decodeMultiStream(this.socket)) {
        if (!Array.isArray(msg) || msg[0] !== RESPONSE) continue; // the bridge sends nothing else
        const [, msgid, error, result] = msg;
        const call = this.pending.get(msgid);
        if (!call) continue;
        this.pending.delete(msgid);
        clearTimeout(call.timer);
        if (error === null || error === undefined) {
          call.resolve(result);
        } else {
          call.reject(remoteError(call.method, error));
        }
      }
    } catch (err) {
      this.failAll(new Error(`connection error: ${err.message}`));
      return;
    }
    this.failAll(new Error("server closed the connection"));
  }

  failAll(err) {
    this.closed = true;
    for (const call of this.pending.values()) {
      clearTimeout(call.timer);
      call.reject(err);
    }
    this.pending.clear();
  }

  /** Send a request; resolves with the result, rejects with the server's [code, message]. */
  call(method, ...params) {
    if (this.closed) return Promise.reject(new Error("connection is closed"));
    const msgid = this.nextId;
    this.nextId = (this.nextId + 1) % 2 ** 32;
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(msgid);
        reject(new Error(`${method} timed out after ${CALL_TIMEOUT_MS} ms`));
      }, CALL_TIMEOUT_MS);
      this.pending.set(msgid, { resolve, reject, timer, method });
      this.socket.write(encode([REQUEST, msgid, method, params]));
    });
  }

  /** Fire and forget: never answered. */
  notify(method, ...params) {
    this.socket.write(encode([NOTIFICATION, method, params]));
  }

  close() {
    this.closed = true;
    this.socket.end();
  }
}

// A small seeded generator (mulberry32) so every run plays the same observations.
function rng(seed) {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

/** An observation laid out as the archetype describes it: one value per feature slot. */
function observation(spec, random, step, steps) {
  const obs = [];
  for (const feature of spec.observation) {
    for (let i = 0; i < feature.size; i++) {
      obs.push(feature.name === "round_progress" ? step / steps : Math.round(random() * 1000) / 1000);
    }
  }
  return obs;
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

async function main() {
  const host = process.argv[2] || process.env.NPCADAPT_HOST || "127.0.0.1";
  const port = Number(process.argv[3] || process.env.NPCADAPT_PORT || 7777);
  const episodes = Number(process.env.EPISODES || 4);
  const steps = Number(process.env.STEPS || 5);
  const player = process.env.PLAYER || "node-player-1";
  const npc = "sparring-partner";
  const archetype = "duelist";
  if (!Number.isInteger(port) || port <= 0 || port > 65535) throw new Error(`bad port ${port}`);

  const client = await RpcClient.connect(host, port);
  try {
    if (process.env.NPCADAPT_TOKEN) await client.call("auth", process.env.NPCADAPT_TOKEN);

    const archetypes = await client.call("archetypes");
    const spec = archetypes.find((a) => a.name === archetype);
    if (!spec) throw new Error(`server has no ${archetype} archetype; it has ${archetypes.map((a) => a.name)}`);
    const obsLength = spec.observation.reduce((n, f) => n + f.size, 0);
    console.log(`archetypes: ${archetypes.map((a) => a.name).join(", ")}; ${archetype} obs ${obsLength}, ` +
      `${spec.actions.length} actions, version ${spec.version}`);

    const random = rng(42);
    const counts = {};
    let decisions = 0;
    let totalReward = 0;
    for (let ep = 0; ep < episodes; ep++) {
      let episodeReward = 0;
      for (let step = 0; step < steps; step++) {
        const obs = observation(spec, random, step, steps); // an array of numbers
        const d = await client.call("act", archetype, player, npc, obs);
        if (d.action_name !== spec.actions[d.action]) {
          throw new Error(`act returned action ${d.action} named ${d.action_name}, expected ${spec.actions[d.action]}`);
        }
        counts[d.action_name] = (counts[d.action_name] || 0) + 1;
        decisions++;
        // The game scores the NPC's move; here: blocks and dodges are rewarded.
        const reward = /^(block|dodge)/.test(d.action_name) ? 1.0 : -0.1;
        episodeReward += reward;
        client.notify("feedback", player, npc, reward, step === steps - 1); // done ends the episode
      }
      totalReward += episodeReward;
      console.log(`episode ${ep + 1}: reward ${episodeReward.toFixed(2)}`);
    }

    // The online trainer runs in the background; give it a moment to adapt this player.
    let info = null;
    for (let i = 0; i < 100 && !(info && info.version > 0); i++) {  // up to 10 s: training runs in the background
      info = await client.call("adapter_info", archetype, player);
      if (!(info && info.version > 0)) await sleep(100);
    }
    const stats = await client.call("stats");

    const histogram = Object.entries(counts).sort().map(([k, v]) => `${k}=${v}`).join(" ");
    console.log(`decisions: ${decisions}; actions: ${histogram}; total reward ${totalReward.toFixed(2)}`);
    console.log(info ? `adapter: version ${info.version}, updates ${info.updates}` : "adapter: none yet (base policy)");
    console.log(`server: ${stats.decisions ?? "?"} decisions, ${stats.updates ?? 0} updates, ` +
      `${stats.connections} connections, act p50 ${stats.act_p50_ms} ms`);
    console.log("ok");
  } finally {
    client.close();
  }
}

module.exports = { RpcClient, OVERLOADED };

if (require.main === module) {
  main().then(
    () => process.exit(0),
    (err) => {
      console.error(`npcadapt node example: ${err.message}`);
      process.exit(1);
    },
  );
}
