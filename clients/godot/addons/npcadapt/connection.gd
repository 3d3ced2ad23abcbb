# Buffered MessagePack-RPC over StreamPeerTCP (Godot 3.2+ and Godot 4), never blocking.
#
# - request() encodes and writes at once (what the socket does not take waits in an
#   output buffer); nothing is read until poll(), so requests pipeline freely.
# - poll() reads what has arrived, decodes every complete reply (a reply may be split
#   across reads, several may come in one read) and matches replies to requests by
#   msgid, in whatever order they come. A reply still arriving is only framed (msgpack.gd
#   scan(): where it ends), at the cost of the new bytes, and decoded once complete.
# - Finished calls are appended to `completed` as [id, ok, value_or_code, message]; the
#   owner (npcadapt.gd) drains that list after each poll().
# - The connection opens on first use and comes back by itself: when it drops, every
#   request waiting for a reply fails with code -1 "connection lost" and the next attempt
#   starts at once when it had answered something; failed attempts, and connections that
#   close before any reply (a server at its connection limit), back off (reconnect_min_s
#   doubling up to reconnect_max_s). Requests made while disconnected wait for the next
#   attempt and fail with -1 "cannot connect to HOST:PORT" if it fails. A host name is
#   looked up without blocking (compat resolve_*); an IP address connects at once. With a
#   token, auth(token) is sent first on every new connection, and what was queued behind
#   it is held until it is answered (before auth the server allows 64 KiB per message).
#
# No `extends`: a Reference (Godot 3) / RefCounted (Godot 4).

const DISCONNECTED = 0
const CONNECTING = 1
const CONNECTED = 2

const CLIENT_ERROR = -1
const MAX_REPLY_BYTES = 64 * 1024 * 1024  # one reply larger than this: the stream is not trusted
const MAX_READ_PER_POLL = 4 * 1024 * 1024

var host = "127.0.0.1"
var port = 7777
var token = ""
var connect_timeout_s = 3.0
var reconnect_min_s = 0.1
var reconnect_max_s = 3.0
var request_timeout_s = 30.0  # <= 0: wait for ever

var state = DISCONNECTED
var last_error = ""
var completed = []  # [id, ok, value_or_code, message] per finished call, in finishing order

var _c
var _codec
var _tcp = null
var _out  # bytes written by requests that the socket has not taken yet
var _in  # bytes of a reply that has not fully arrived
var _waiting = {}  # msgid -> id, in send order
var _sent_us = {}  # msgid -> ticks_usec when requested (timeouts)
var _next_id = 0
var _open = false  # a connection is wanted (set by open() and every call, cleared by close())
var _backoff_s = 0.1
var _next_attempt_us = 0
var _connect_started_us = 0
var _auth_msgid = -1  # the automatic auth of this connection, until answered
var _holding = false  # send only the first _hold bytes of _out until _auth_msgid is answered
var _hold = 0
var _replied = false  # this connection has answered something (it works: no backoff)
var _lookup = null  # the name lookup in progress (a compat resolve_begin handle)
var _partial = false  # _in holds the start of a reply, framed by _scan so far
var _scan = [0, 0]
var _last_sweep_us = 0
var _st_connected
var _st_connecting


func _init(compat, codec):
	_c = compat
	_codec = codec
	_out = compat.bytes()
	_in = compat.bytes()
	_st_connected = StreamPeerTCP.STATUS_CONNECTED
	_st_connecting = StreamPeerTCP.STATUS_CONNECTING


func next_id():
	_next_id += 1
	return _next_id


func pending_count():
	return _waiting.size()


# Sends [0, msgid, method, params]; returns the call's id (never reused; msgid is its low
# 32 bits). An encoding failure finishes the call at once with code -1.
func request(method, params):
	var id = next_id()
	var msgid = id & 0xffffffff
	var data = _codec.encode_request(msgid, method, params)
	if data == null:  # fails alone: nothing is sent, the connection is not touched
		completed.append([id, false, CLIENT_ERROR,
				"cannot encode the params of %s: %s; not sent" % [method, _codec.error]])
		return id
	_open = true
	_waiting[msgid] = id
	_sent_us[msgid] = _c.ticks_usec()
	_send(data)
	return id


# Sends [2, method, params]; "" when queued, else why not (params cannot be encoded).
# Fire and forget: written now if connected, else when the connection (re)opens; lost if
# the connection drops before the bytes are written.
func notify(method, params):
	var data = _codec.encode_notification(method, params)
	if data == null:
		return "cannot encode the params of %s: %s; not sent" % [method, _codec.error]
	_open = true
	_send(data)
	return ""


func open():
	_open = true
	if state == DISCONNECTED and _c.ticks_usec() >= _next_attempt_us:
		_start_connect()


# Closes the socket; waiting calls fail with -1 "connection closed". Bytes already queued
# are written first when the socket takes them at once. The next call opens it again.
func close():
	_open = false
	if state == CONNECTED and _out.size() > 0:
		_tcp.put_partial_data(_out)
	_disconnect()
	_out = _c.bytes()
	_fail_all("connection closed")
	_next_attempt_us = 0
	_backoff_s = reconnect_min_s


func poll():
	if state == CONNECTED:
		var st = _c.tcp_status(_tcp)
		if st != _st_connected:
			_lost("connection lost")
		else:
			_read()
			if state == CONNECTED and _out.size() > 0:
				_flush_out()
	elif state == CONNECTING:
		if _lookup != null:
			_resolve_step()
		else:
			var st = _c.tcp_status(_tcp)
			if st == _st_connected:
				_on_connected()
			elif st == _st_connecting:
				if _c.ticks_usec() - _connect_started_us > int(connect_timeout_s * 1000000.0):
					_connect_failed("timed out connecting to %s:%d" % [host, port])
			else:
				_connect_failed("cannot connect to %s:%d" % [host, port])
	elif _open and _c.ticks_usec() >= _next_attempt_us:
		_start_connect()
	if request_timeout_s > 0 and _sent_us.size() > 0:
		var now = _c.ticks_usec()
		if now - _last_sweep_us >= 100000:
			_last_sweep_us = now
			_expire(now)


# The value a reply message carries: [true, result] or [false, code, message]; null when
# msg is not a response.
func reply_value(msg):
	if typeof(msg) != TYPE_ARRAY or msg.size() != 4 or typeof(msg[0]) != TYPE_INT or msg[0] != 1:
		return null
	var err = msg[2]
	if err == null:
		return [true, msg[3]]
	if typeof(err) == TYPE_ARRAY and err.size() >= 2 and typeof(err[0]) == TYPE_INT:
		return [false, err[0], str(err[1])]
	return [false, CLIENT_ERROR, "malformed error from the server: %s" % str(err)]


# ---------------------------------------------------------------- internals

func _send(data):
	if state == CONNECTED and _out.size() == 0 and not _holding:
		var r = _tcp.put_partial_data(data)
		if r[0] != OK:
			_lost("connection lost")
			return
		if r[1] == data.size():
			return
		data = _c.slice(data, r[1], data.size())
	_out.append_array(data)
	if state == DISCONNECTED and _c.ticks_usec() >= _next_attempt_us:
		_start_connect()


func _flush_out():
	var n = _out.size()
	if _holding:
		n = _hold
		if n <= 0:
			return
	var r = _tcp.put_partial_data(_out if n == _out.size() else _c.slice(_out, 0, n))
	if r[0] != OK:
		_lost("connection lost")
		return
	if _holding:
		_hold -= r[1]
	if r[1] == _out.size():
		_out = _c.bytes()
	elif r[1] > 0:
		_out = _c.slice(_out, r[1], _out.size())


func _read():
	var n = _tcp.get_available_bytes()
	if n <= 0:
		return
	var r = _tcp.get_partial_data(n)
	if r[0] != OK:
		_lost("connection lost")
		return
	var data = r[1]
	if _in.size() > 0:
		_in.append_array(data)
		data = _in
	# take what else has arrived meanwhile (a large reply comes in many reads)
	n = _tcp.get_available_bytes()
	while n > 0 and data.size() < MAX_READ_PER_POLL:
		r = _tcp.get_partial_data(n)
		if r[0] != OK:
			_lost("connection lost")
			return
		data.append_array(r[1])
		n = _tcp.get_available_bytes()
	n = data.size()
	if _partial:
		# the first reply is still arriving: frame the new bytes only, decode it once whole
		if not _codec.scan(data, n, _scan):
			_keep_partial(data)
			return
		_partial = false
	_codec.decode_begin(data)
	while _codec.decode_pending() > 0:
		var msg = _codec.decode_next()
		if _codec.error != "":
			_lost("bad reply from the server (%s); connection lost" % _codec.error)
			return
		if _codec.need_more:
			break
		_on_message(msg)
	var off = _codec.decode_offset()
	if off >= n:
		_in = _c.bytes()
		return
	# a reply has begun to arrive: frame what there is of it, then only what comes
	var rest = data if off == 0 else _c.slice(data, off, n)
	_partial = true
	_scan[0] = 0
	_scan[1] = 1
	_codec.scan(rest, rest.size(), _scan)
	_keep_partial(rest)


func _keep_partial(data):
	_in = data
	if _scan[0] > MAX_REPLY_BYTES or data.size() > MAX_REPLY_BYTES:
		_lost("reply larger than %d bytes; connection lost" % MAX_REPLY_BYTES)


func _on_message(msg):
	var v = reply_value(msg)
	if v == null:
		return  # requests and notifications from the server: none are defined
	_replied = true
	var msgid = msg[1]
	if msgid == _auth_msgid:
		_auth_msgid = -1
		_holding = false  # poll() sends what waited behind it
		if not v[0]:
			last_error = "auth on connect failed: %s" % v[2]
		return
	var id = _waiting.get(msgid)
	if id == null:
		return  # timed out already, or not ours
	_waiting.erase(msgid)
	_sent_us.erase(msgid)
	if v[0]:
		completed.append([id, true, v[1], ""])
	else:
		completed.append([id, false, v[1], v[2]])


func _start_connect():
	_disconnect()
	state = CONNECTING
	_connect_started_us = _c.ticks_usec()
	if host.is_valid_ip_address():
		_connect_to(host)
		return
	_lookup = _c.resolve_begin(host)  # a thread or the engine's resolver: never blocks
	if _lookup == null:
		_connect_failed("cannot connect to %s:%d: cannot look up %s" % [host, port, host])
	else:
		_resolve_step()  # a cached answer connects at once


func _resolve_step():
	var ip = _c.resolve_poll(_lookup)
	if ip == null:
		if _c.ticks_usec() - _connect_started_us > int(connect_timeout_s * 1000000.0):
			_connect_failed("cannot connect to %s:%d: looking up %s timed out" % [host, port, host])
		return
	_lookup = null
	if ip == "":
		_connect_failed("cannot connect to %s:%d: cannot resolve %s" % [host, port, host])
	else:
		_connect_to(ip)


func _connect_to(ip):
	_tcp = StreamPeerTCP.new()
	var err = _tcp.connect_to_host(ip, port)
	if err != OK:
		_connect_failed("cannot connect to %s:%d (error %d)" % [host, port, err])
		return
	var st = _c.tcp_status(_tcp)
	if st == _st_connected:
		_on_connected()
	elif st != _st_connecting:
		_connect_failed("cannot connect to %s:%d" % [host, port])


func _on_connected():
	state = CONNECTED
	_tcp.set_no_delay(true)
	if token != "":
		var msgid = next_id() & 0xffffffff
		var data = _codec.encode_request(msgid, "auth", [token])
		if data != null:
			_auth_msgid = msgid
			_holding = true
			_hold = data.size()
			data.append_array(_out)
			_out = data
	if _out.size() > 0:
		_flush_out()


func _connect_failed(reason):
	_disconnect()
	_out = _c.bytes()
	last_error = reason
	_fail_all(reason)
	_retry_later()


# the connection dropped: fail what waits; try again at once if it had answered (it
# worked), else back off (a server that accepts and closes at once is not hammered)
func _lost(reason):
	var worked = _replied
	_disconnect()
	_out = _c.bytes()
	last_error = reason
	_fail_all(reason)
	if worked:
		_backoff_s = reconnect_min_s
		_next_attempt_us = 0
	else:
		_retry_later()


func _retry_later():
	_next_attempt_us = _c.ticks_usec() + int(_backoff_s * 1000000.0)
	_backoff_s = min(_backoff_s * 2.0, reconnect_max_s)


# closes the socket; _out (what waits for the next connection) is kept
func _disconnect():
	if _tcp != null:
		_tcp.disconnect_from_host()
		_tcp = null
	if _lookup != null:
		_c.resolve_cancel(_lookup)
		_lookup = null
	state = DISCONNECTED
	_in = _c.bytes()
	_partial = false
	_auth_msgid = -1
	_holding = false
	_replied = false


func _fail_all(reason):
	for msgid in _waiting:
		completed.append([_waiting[msgid], false, CLIENT_ERROR, reason])
	_waiting.clear()
	_sent_us.clear()


func _expire(now):
	var limit = int(request_timeout_s * 1000000.0)
	var expired = []
	for msgid in _sent_us:
		if now - _sent_us[msgid] <= limit:
			break  # in send order: the rest are younger
		expired.append(msgid)
	for msgid in expired:
		completed.append([_waiting[msgid], false, CLIENT_ERROR,
				"timed out: no reply after %s s" % str(request_timeout_s)])
		_waiting.erase(msgid)
		_sent_us.erase(msgid)
