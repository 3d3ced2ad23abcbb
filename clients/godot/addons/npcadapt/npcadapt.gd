extends Node
class_name NpcAdapt
# The npcadapt client node: NPCs that adapt to each player, served by `npcadapt serve`
# over MessagePack-RPC (docs/protocol.md). Runs on the main thread and never blocks:
# every call returns a request id at once; the reply arrives later, delivered by the
# `result` / `failed` signals from _process() and kept for take(id) / is_done(id).
#
#     var npc = NpcAdapt.new()
#     npc.port = 7777
#     add_child(npc)
#     npc.connect("result", self, "_on_result")            # Godot 4: npc.result.connect(_on_result)
#     var id = npc.act("duelist", "player1", "npc1", [0.5, 0.25, 1, 0, 0, 0.75, 0.5, 0])
#
# Outside a scene tree (tools, tests) call poll() yourself. Shared by Godot 3.2+ and 4:
# the version differences live in compat_godot3.gd / compat_godot4.gd.

signal result(id, value)
signal failed(id, code, message, retryable)

const OVERLOADED = 6  # the only retryable server error: nothing was done, try again later
const CLIENT_ERROR = -1  # cannot connect, connection lost, timed out, cannot encode
const NOTIFIED = "notified"  # marks a sent notification in the finished list (no signal)

const Msgpack = preload("msgpack.gd")
const Connection = preload("connection.gd")

# Settings, read when a connection is opened (host, port, token) or a call is made.
var host = "127.0.0.1"
var port = 7777
var token = ""  # sent as auth(token) first on every connection when not ""
var obs_as_bin = true  # obs arrays go as float32 little-endian bin (cheap); false: arrays of float64
var request_timeout_s = 30.0  # a call without a reply after this long fails with -1; <= 0: never
var keep_results = true  # keep finished calls for take(id) / is_done(id)
var keep_results_s = 60.0  # ... and drop those nobody took after this long

var _c
var _codec
var _conn
var _T_BYTES
var _results = {}  # id -> [id, ok, value_or_code, message, finished_msec]
var _auth_ids = {}  # id -> token of explicit auth() calls in flight
var _last_gc_ms = 0


func _init():
	var dir = get_script().resource_path.get_base_dir()
	var major = Engine.get_version_info().major
	_c = load(dir + ("/compat_godot4.gd" if major >= 4 else "/compat_godot3.gd")).new()
	_T_BYTES = _c.T_BYTES
	_codec = Msgpack.new(_c)
	_conn = Connection.new(_c, _codec)


func _ready():
	call_deferred("open")  # after the parent's _ready, which may set host / port / token


func _process(_delta):
	poll()


func _notification(what):
	if what == NOTIFICATION_PREDELETE and _conn != null:
		_conn.close()


# ---------------------------------------------------------------- the bridge's methods

func archetypes():
	return call_method("archetypes", [])


# One decision for player's NPC npc. obs: Array / PoolRealArray / PackedFloat32Array of
# numbers (sent as float32 bin unless obs_as_bin is false) or bytes already in the bin
# form. mask: Array of bools or 0/1 (true = allowed), or null. Result: the decision map
# {decision, action, action_name, logp, value, entropy, adapter_version}.
func act(archetype, player, npc, obs, mask = null, greedy = false):
	return call_method("act", _act_params(archetype, player, npc, obs, mask, greedy))


# rows: Array of [player, npc, obs] or [player, npc, obs, options]; options a Dictionary
# ({"mask": [...], "greedy": true}) or a mask Array. Result: Array of decision maps.
func act_batch(archetype, rows):
	var out = []
	for r in rows:
		var row = [r[0], r[1], _obs(r[2])]
		if r.size() > 3 and r[3] != null:
			row.append(_options(r[3]))
		out.append(row)
	return call_method("act_batch", [archetype, out])


# Reward for the latest decision of player's NPC npc; done ends the episode. Sent as a
# notification (fire and forget): the id finishes at the next poll() with null, without a
# `result` signal (`failed` only if it could not be encoded). With wait = true it is a
# request: `result(id, true)` once the server applied it.
func feedback(player, npc, reward, done = false, wait = false):
	var params = [player, npc, reward * 1.0, bool(done)]  # * 1.0: Godot 3's float(int) rounds to float32
	if wait:
		return call_method("feedback", params)
	_sync()
	var id = _conn.next_id()
	var err = _conn.notify("feedback", params)
	if err == "":
		_conn.completed.append([id, true, null, NOTIFIED])
	else:
		_conn.completed.append([id, false, CLIENT_ERROR, err])
	return id


# rows: Array of [player, obs]. Result: Array of probability arrays, one per row (the
# player's current policy, or the base policy with base = true).
func action_probs(archetype, rows, base = false):
	var out = []
	for r in rows:
		out.append([r[0], _obs(r[1])])
	var params = [archetype, out]
	if base:
		params.append({"base": true})
	return call_method("action_probs", params)


# Result: the player's adapter map ({version, updates, ...}) or null (base policy).
func adapter_info(archetype, player):
	return call_method("adapter_info", [archetype, player])


func prior_info(archetype, player):
	return call_method("prior_info", [archetype, player])


func reset_player(archetype, player):
	return call_method("reset_player", [archetype, player])


# Result: the number of adapters written; everything sent before it is on disk.
func flush():
	return call_method("flush", [])


func stats():
	return call_method("stats", [])


# Authenticates this connection; on success the token is kept (the `token` property)
# and sent again on every reconnect.
func auth(auth_token):
	var id = call_method("auth", [auth_token])
	_auth_ids[id] = auth_token
	return id


# Any method, positional params (an Array). Returns the request id.
func call_method(method, params = []):
	_sync()
	return _conn.request(method, params)


# ---------------------------------------------------------------- results

# Reads and dispatches replies; _process() calls it every frame. Never blocks.
func poll():
	_sync()
	_conn.poll()
	if _conn.completed.size() > 0:
		_drain()
	if keep_results and _results.size() > 0:
		var now = int(_c.ticks_usec() / 1000)
		if now - _last_gc_ms >= 1000:
			_last_gc_ms = now
			_gc(now)


# True once call `id` has finished (and is kept: keep_results, not taken yet).
func is_done(id):
	return _results.has(id)


# The finished call `id`, removed: {"ok": true, "value": v} or {"ok": false, "code": c,
# "message": m, "retryable": r}; null while it is still in flight (or unknown).
func take(id):
	var e = _results.get(id)
	if e == null:
		return null
	_results.erase(id)
	if e[1]:
		return {"ok": true, "value": e[2]}
	return {"ok": false, "code": e[2], "message": e[3], "retryable": e[2] == OVERLOADED}


# Calls sent and not answered yet.
func pending_count():
	return _conn.pending_count()


# "disconnected", "connecting" or "connected".
func connection_state():
	return ["disconnected", "connecting", "connected"][_conn.state]


# Why the connection last failed ("" if it never did).
func last_error():
	return _conn.last_error


# Connects now instead of at the first call (done right after _ready).
func open():
	_sync()
	_conn.open()


# Closes the connection; calls in flight fail with -1 "connection closed" (signals are
# emitted now). The next call reconnects.
func close():
	_conn.close()
	_drain()


# ---------------------------------------------------------------- helpers

# float32 little-endian bytes of a list of numbers: the bin obs form.
func obs_bytes(values):
	return _codec.float32_le(values)


# A standalone MessagePack codec (msgpack.gd) for this Godot version.
func make_codec():
	return Msgpack.new(_c)


# The version glue in use (compat_godot3.gd or compat_godot4.gd).
func compat():
	return _c


# For benchmarks and tools: the bytes act() would send for these arguments...
func encode_act(archetype, player, npc, obs, mask = null, greedy = false, msgid = 0):
	return _codec.encode_request(msgid, "act", _act_params(archetype, player, npc, obs, mask, greedy))


# ... and what one reply's bytes would be delivered as: {"ok": true, "value": v} or
# {"ok": false, "code": c, "message": m, "retryable": r}; null if not one whole reply.
func decode_reply(bytes):
	_codec.decode_begin(bytes)
	var msg = _codec.decode_next()
	if _codec.error != "" or _codec.need_more or _codec.decode_pending() != 0:
		return null
	var v = _conn.reply_value(msg)
	if v == null:
		return null
	if v[0]:
		return {"ok": true, "value": v[1]}
	return {"ok": false, "code": v[1], "message": v[2], "retryable": v[1] == OVERLOADED}


func _act_params(archetype, player, npc, obs, mask, greedy):
	var params = [archetype, player, npc, _obs(obs)]
	if mask != null or greedy:
		var opts = {}
		if mask != null:
			opts["mask"] = _mask(mask)
		if greedy:
			opts["greedy"] = true
		params.append(opts)
	return params


func _obs(obs):
	if typeof(obs) == _T_BYTES:
		return obs
	if obs_as_bin:
		return _codec.float32_le(obs)
	var a = []
	for x in obs:
		a.append(x * 1.0)
	return a


func _mask(mask):
	var m = []
	for x in mask:
		m.append(bool(x))
	return m


func _options(o):
	if typeof(o) == TYPE_DICTIONARY:
		if o.has("mask"):
			var d = o.duplicate()
			d["mask"] = _mask(o["mask"])
			return d
		return o
	return {"mask": _mask(o)}


func _sync():
	_conn.host = host
	_conn.port = port
	_conn.token = token
	_conn.request_timeout_s = request_timeout_s


func _drain():
	var done = _conn.completed
	_conn.completed = []
	var now = int(_c.ticks_usec() / 1000)
	for e in done:
		var id = e[0]
		if _auth_ids.size() > 0 and _auth_ids.has(id):
			if e[1]:
				token = _auth_ids[id]
			_auth_ids.erase(id)
		if keep_results:
			e.append(now)
			_results[id] = e
		if e[1]:
			if e[3] != NOTIFIED:
				emit_signal("result", id, e[2])
		else:
			emit_signal("failed", id, e[2], e[3], e[2] == OVERLOADED)


func _gc(now):
	var old = []
	for id in _results:
		if now - _results[id][4] < keep_results_s * 1000.0:
			break  # in finishing order: the rest are younger
		old.append(id)
	for id in old:
		_results.erase(id)
