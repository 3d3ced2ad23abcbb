extends SceneTree
# Conformance driver for the npcadapt Godot client (clients/CONFORMANCE.md).
#
#   godot3-server --no-window --path clients/godot -s conformance/driver.gd HOST PORT
#
# Reads one command per stdin line, answers each with one JSON line on stdout, using only
# the NpcAdapt node's public API (poll() in a loop with short sleeps stands in for the
# game's frames). Godot itself prints two lines to stdout before the script starts (the
# engine banner and a line holding one space); diagnostics go to stderr.

const NpcAdaptScript = preload("res://addons/npcadapt/npcadapt.gd")
const WAIT_S = 10.0
const BENCH_OBS = [0.5, 0.25, 1.0, 0.0, 0.0, 0.75, 0.5, 0.0]
const BENCH_REPLY = "940101c087a86465636973696f6ece00000001a46c6f6770cabf69111ca576616c7565ca3e998751a7656e74726f7079ca3f97d5d3af616461707465725f76657273696f6ece00000000a6616374696f6e06ab616374696f6e5f6e616d65a56665696e74"
const BASE = 1000000000  # bignum limb (decimal float formatting and parsing)

var client
var _c
var _codec
var _sp  # little-endian StreamPeerBuffer: float bits
var _hexval = []
var _quit = false


func _init():
	var args = []
	for a in OS.get_cmdline_args():
		args.append(a)
	var rest = []
	var i = args.find("--")
	if i >= 0:
		for j in range(i + 1, args.size()):
			rest.append(args[j])
	else:
		for flag in ["-s", "--script"]:
			i = args.find(flag)
			if i >= 0:
				for j in range(i + 2, args.size()):
					rest.append(args[j])
				break
	var host = rest[0] if rest.size() > 0 else "127.0.0.1"
	var port = int(rest[1]) if rest.size() > 1 else 7777
	client = NpcAdaptScript.new()
	client.host = host
	client.port = port
	client.obs_as_bin = false  # Arrays (list:) go as float64 arrays; bin: obs are bytes already
	_c = client.compat()
	_codec = client.make_codec()
	_sp = StreamPeerBuffer.new()
	_sp.big_endian = false
	_hexval.resize(256)
	for k in range(256):
		_hexval[k] = -1
	var digits = _c.utf8("0123456789abcdefABCDEF")
	for k in range(digits.size()):
		_hexval[digits[k]] = k if k < 16 else k - 6
	while not _quit:
		var line = _c.read_stdin_line()
		if line == null:
			break
		var answer = _run(line)
		if answer == null:  # a script error inside _run (printed on stderr)
			answer = _bad("driver script error on: %s" % line)
		print(answer)
	client.close()
	client.free()
	quit(0)


# ---------------------------------------------------------------- commands

func _run(line):
	var t = line.split(" ")
	var cmd = t[0]
	var n = t.size()
	if cmd == "quit":
		_quit = true
		return _ok(true)
	if cmd == "auth" and n == 2:
		return _answer(_wait(client.auth(t[1])))
	if cmd == "archetypes" and n == 1:
		return _answer(_wait(client.archetypes()))
	if cmd == "act" and n >= 5:
		return _act(t)
	if cmd == "act_batch" and n >= 3:
		return _act_batch(t)
	if (cmd == "feedback" or cmd == "feedback_wait") and n == 5:
		var reward = _float(t[3])
		if reward == null:
			return _bad("bad reward '%s'" % t[3])
		var id = client.feedback(t[1], t[2], reward, t[4] == "1", cmd == "feedback_wait")
		if cmd == "feedback":
			client.poll()  # writes it if the connection is still opening
			return _ok(null)
		return _answer(_wait(id))
	if cmd == "action_probs" and (n == 4 or (n == 5 and t[4] == "base")):
		var obs = _obs(t[3])
		if obs == null:
			return _bad("bad OBS '%s'" % t[3])
		return _answer(_wait(client.action_probs(t[1], [[t[2], obs]], n == 5)))
	if cmd == "adapter_info" and n == 3:
		return _answer(_wait(client.adapter_info(t[1], t[2])))
	if cmd == "flush" and n == 1:
		return _answer(_wait(client.flush()))
	if cmd == "call" and n == 2:
		return _answer(_wait(client.call_method(t[1], [])))
	if cmd == "pipeline" and n == 7:
		return _pipeline(t)
	if cmd == "act_retry" and n == 6:
		return _act_retry(t)
	if cmd == "encode" and n == 3:
		return _encode(t[1], t[2])
	if cmd == "decode" and n == 2:
		var b = _unhex(t[1])
		if b == null:
			return _bad("bad hex")
		var v = _codec.decode(b)
		if _codec.error != "":
			return _bad(_codec.error)
		return _ok(v)
	if cmd == "bench" and n == 7:
		return _bench(t)
	return _bad("unknown command or wrong arguments: %s" % line)


func _act(t):
	var obs = _obs(t[4])
	if obs == null:
		return _bad("bad OBS '%s'" % t[4])
	var mask = null
	var greedy = false
	for k in range(5, t.size()):
		if t[k] == "greedy":
			greedy = true
		elif t[k].begins_with("mask:"):
			mask = _mask(t[k])
		else:
			return _bad("unknown act option '%s'" % t[k])
	return _answer(_wait(client.act(t[1], t[2], t[3], obs, mask, greedy)))


func _act_batch(t):
	var rows = []
	for k in range(2, t.size()):
		var p = t[k].split("|")
		if p.size() != 3 and p.size() != 4:
			return _bad("bad ROW '%s'" % t[k])
		var obs = _obs(p[2])
		if obs == null:
			return _bad("bad OBS '%s'" % p[2])
		var row = [p[0], p[1], obs]
		if p.size() == 4:
			row.append({"mask": _mask(p[3])})
		rows.append(row)
	return _answer(_wait(client.act_batch(t[1], rows)))


func _pipeline(t):
	var count = int(t[1])
	var obs = _obs(t[5])
	if obs == null or (t[6] != "act" and t[6] != "mixed"):
		return _bad("bad pipeline arguments")
	var ids = []
	for k in range(count):
		if t[6] == "act" or k % 2 == 0:
			ids.append(client.act(t[2], t[3], t[4], obs))
		else:
			ids.append(client.adapter_info(t[2], t[3]))
	var entries = []
	for id in ids:
		var r = _wait(id)
		if not r["ok"]:
			entries.append({"kind": "error", "code": r["code"], "retryable": r["retryable"]})
		elif typeof(r["value"]) == TYPE_DICTIONARY and r["value"].has("decision"):
			entries.append({"kind": "decision", "decision": r["value"]["decision"]})
		else:
			entries.append({"kind": "info"})
	return _ok(entries)


func _act_retry(t):
	var tries = int(t[1])
	var obs = _obs(t[5])
	if obs == null or tries < 1:
		return _bad("bad act_retry arguments")
	var r = null
	for k in range(tries):
		r = _wait(client.act(t[2], t[3], t[4], obs))
		if r["ok"]:
			return _ok({"attempts": k + 1, "decision": r["value"]})
		_sleep(0.1)
	return _answer(r)


func _encode(type, text):
	var v
	_codec.use_single_float = false
	if type == "nil":
		v = null
	elif type == "bool":
		if text != "true" and text != "false":
			return _bad("bad bool '%s'" % text)
		v = text == "true"
	elif type == "int":
		if not _is_int(text):
			return _bad("bad int '%s'" % text)
		v = int(text)  # the Variant conversion reads all 64 bits (String.to_int stops at 32)
	elif type == "float32" or type == "float64":
		v = _float(text)
		if v == null:
			return _bad("bad float '%s'" % text)
		_codec.use_single_float = type == "float32"
	elif type == "str" or type == "bin":
		v = _unhex(text)
		if v == null:
			return _bad("bad hex")
		if type == "str":
			v = v.get_string_from_utf8()
	elif type == "array_int":
		v = []
		for k in range(int(text)):
			v.append(k)
	elif type == "map_str_int":
		v = {}
		for k in range(int(text)):
			v["k%d" % k] = k
	else:
		return _bad("unknown encode type '%s'" % type)
	var b = _codec.encode(v)
	_codec.use_single_float = false
	if b == null:
		return _bad(_codec.error)
	return _ok(b.hex_encode())


func _bench(t):
	client.obs_as_bin = true  # the game's path: an Array of numbers sent as float32 bin
	var answer = _bench_run(t)
	client.obs_as_bin = false
	return answer


func _bench_run(t):
	var seq = int(t[1])
	var pipe = int(t[2])
	var iters = int(t[3])
	var arch = t[4]
	var player = t[5]
	var npc = t[6]
	var obs = BENCH_OBS
	for k in range(5):  # warm up the connection and the server's caches
		var w = _wait(client.act(arch, player, npc, obs))
		if not w["ok"]:
			return _answer(w)
	var rtts = []
	var t0 = _c.ticks_usec()
	for k in range(seq):
		var s = _c.ticks_usec()
		var id = client.act(arch, player, npc, obs)
		var r = _wait(id, true)
		if not r["ok"]:
			return _answer(r)
		rtts.append(_c.ticks_usec() - s)
	var seq_us = max(1, _c.ticks_usec() - t0)
	rtts.sort()
	var p50 = rtts[rtts.size() / 2] * 1.0 if seq > 0 else 0.0
	var p99 = rtts[int(min(rtts.size() - 1, int(rtts.size() * 0.99)))] * 1.0 if seq > 0 else 0.0
	# pipelined: up to 64 in flight
	var ids = []
	var head = 0
	var sent = 0
	t0 = _c.ticks_usec()
	var deadline = t0 + int(WAIT_S * 1000000.0) + pipe * 10000
	while head < pipe:
		while sent < pipe and sent - head < 64:
			ids.append(client.act(arch, player, npc, obs))
			sent += 1
		client.poll()
		while head < sent and client.is_done(ids[head]):
			var r = client.take(ids[head])
			if not r["ok"]:
				return _answer(r)
			head += 1
		if _c.ticks_usec() > deadline:
			return _err(-1, "bench: pipelined acts timed out", false)
	var pipe_us = max(1, _c.ticks_usec() - t0)
	# codec: encode one act request + decode the 100-byte reply, no socket
	var reply = _unhex(BENCH_REPLY)
	var check = client.decode_reply(reply)
	if check == null or not check["ok"] or check["value"]["action_name"] != "feint":
		return _err(-1, "bench: the codec misread the reference reply", false)
	t0 = _c.ticks_usec()
	for k in range(iters):
		client.encode_act(arch, player, npc, obs, null, false, k + 1)
		client.decode_reply(reply)
	var codec_us = (_c.ticks_usec() - t0) * 1.0 / max(1, iters)
	return _ok({
		"sequential_per_s": seq * 1000000.0 / seq_us,
		"pipelined_per_s": pipe * 1000000.0 / pipe_us,
		"p50_us": p50,
		"p99_us": p99,
		"codec_us": codec_us,
	})


# ---------------------------------------------------------------- waiting

# The finished call id as take() gives it; -1 "timed out" after WAIT_S. spin: poll
# without sleeping (the bench's round trips).
func _wait(id, spin = false):
	var deadline = _c.ticks_usec() + int(WAIT_S * 1000000.0)
	while true:
		client.poll()
		if client.is_done(id):
			return client.take(id)
		if _c.ticks_usec() > deadline:
			return {"ok": false, "code": -1, "message": "timed out: no answer within %d s" % int(WAIT_S), "retryable": false}
		if not spin:
			OS.delay_usec(500)
	return null


func _sleep(seconds):
	var until = _c.ticks_usec() + int(seconds * 1000000.0)
	while _c.ticks_usec() < until:
		client.poll()
		OS.delay_usec(2000)


# ---------------------------------------------------------------- tokens

# list:... -> an Array of floats, sent as an array of float64 (the driver keeps the
# client's obs_as_bin off); bin:... -> the float32 bytes, which the client passes through
# as the bin form.
func _obs(tok):
	var list = tok.begins_with("list:")
	if not list and not tok.begins_with("bin:"):
		return null
	var values = []
	var body = tok.substr(tok.find(":") + 1, tok.length())
	for s in body.split(","):
		var x = _float(s)
		if x == null:
			return null
		values.append(x)
	if list:
		return values
	return client.obs_bytes(values)


func _mask(tok):
	var m = []
	for s in tok.substr(5, tok.length()).split(","):
		m.append(s == "1")
	return m


# ---------------------------------------------------------------- JSON answers

func _ok(v):
	return "{\"ok\": true, \"result\": %s}" % _json(v)


func _err(code, message, retryable):
	return "{\"ok\": false, \"code\": %d, \"message\": %s, \"retryable\": %s}" % [code, _quote(message), "true" if retryable else "false"]


func _bad(message):
	return _err(-1, message, false)


func _answer(r):
	if r["ok"]:
		return _ok(r["value"])
	return _err(r["code"], r["message"], r["retryable"])


func _json(v):
	var t = typeof(v)
	if t == TYPE_NIL:
		return "null"
	if t == TYPE_BOOL:
		return "true" if v else "false"
	if t == TYPE_INT:
		return str(v)
	if t == _c.T_FLOAT:
		return _fmt_float(v)
	if t == TYPE_STRING:
		return _quote(v)
	if t == _c.T_BYTES:
		return "{\"$bin\": \"%s\"}" % v.hex_encode()
	if t == TYPE_DICTIONARY:
		var parts = []
		for k in v:
			parts.append(_quote(k if typeof(k) == TYPE_STRING else _json(k)) + ": " + _json(v[k]))
		return "{" + _c.join(parts, ", ") + "}"
	if t == TYPE_ARRAY or t in _c.T_LISTS:
		var parts = []
		for e in v:
			parts.append(_json(e))
		return "[" + _c.join(parts, ", ") + "]"
	return _quote(str(v))


func _quote(s):
	s = s.replace("\\", "\\\\").replace("\"", "\\\"")
	for code in range(1, 32):
		var ch = char(code)
		if s.find(ch) >= 0:
			s = s.replace(ch, "\\u%04x" % code)
	if s.find(char(127)) >= 0:
		s = s.replace(char(127), "\\u007f")
	return "\"" + s + "\""


# ---------------------------------------------------------------- hex

func _unhex(text):
	var b = _c.bytes()
	if text == "-":
		return b
	var src = _c.utf8(text)
	var n = src.size()
	if n % 2 != 0:
		return null
	b.resize(n / 2)
	for k in range(n / 2):
		var hi = _hexval[src[2 * k]]
		var lo = _hexval[src[2 * k + 1]]
		if hi < 0 or lo < 0:
			return null
		b[k] = hi * 16 + lo
	return b


# ---------------------------------------------------------------- floats
# Godot 3's String.to_float() rounds to float32 and its float-to-text keeps 6 digits, so
# both directions are done here exactly, with small bignums (base 1e9 limbs).

# %.17g, trailing zeros dropped, ".0" added when it would read as an int; NaN/Infinity
# as Python's json writes them.
func _fmt_float(x):
	if x != x:
		return "NaN"
	if x == INF:
		return "Infinity"
	if x == -INF:
		return "-Infinity"
	var bits = _bits(x)
	var neg = bits < 0
	var ex = (bits >> 52) & 0x7ff
	var m = bits & 0xfffffffffffff
	if ex == 0 and m == 0:
		return "-0.0" if neg else "0.0"
	var e = -1074
	if ex != 0:
		m = m | 0x10000000000000
		e = ex - 1075
	while (m & 1) == 0:
		m = m >> 1
		e += 1
	var big = _big_from_int(m)
	var d10 = 0
	if e > 0:
		_big_mul_pow2(big, e)
	elif e < 0:
		_big_mul_pow5(big, -e)
		d10 = e
	var digits = _big_digits(big)  # value = digits * 10^d10
	var exp10 = digits.length() + d10 - 1
	var sig = digits
	if digits.length() > 17:
		var q = int(digits.substr(0, 17))
		var r = int(digits.substr(17, 1))
		var tail = digits.substr(18, digits.length()).replace("0", "")
		if r > 5 or (r == 5 and (tail != "" or (q & 1) == 1)):
			q += 1
			if q == 100000000000000000:
				q = 10000000000000000
				exp10 += 1
		sig = str(q)
	while sig.length() > 1 and sig.ends_with("0"):
		sig = sig.substr(0, sig.length() - 1)
	var s
	if exp10 < -4 or exp10 >= 17:
		s = sig.substr(0, 1)
		if sig.length() > 1:
			s += "." + sig.substr(1, sig.length())
		s += ("e+%02d" % exp10) if exp10 >= 0 else ("e-%02d" % -exp10)
	elif exp10 >= 0:
		if sig.length() <= exp10 + 1:
			s = sig + _zeros(exp10 + 1 - sig.length()) + ".0"
		else:
			s = sig.substr(0, exp10 + 1) + "." + sig.substr(exp10 + 1, sig.length())
	else:
		s = "0." + _zeros(-exp10 - 1) + sig
	return ("-" + s) if neg else s


# Decimal text -> the nearest float64 (ties to even), like Python's float(); also inf,
# infinity, nan. null when not a number.
func _float(text):
	var t = text.strip_edges().to_lower()
	var neg = false
	if t.begins_with("-") or t.begins_with("+"):
		neg = t.begins_with("-")
		t = t.substr(1, t.length())
	if t == "inf" or t == "infinity":
		return -INF if neg else INF
	if t == "nan":
		return NAN
	var e10 = 0
	var ei = t.find("e")
	var mant = t
	if ei >= 0:
		var es = t.substr(ei + 1, t.length())
		if not _is_int(es):
			return null
		e10 = int(es)
		mant = t.substr(0, ei)
	var dot = mant.find(".")
	var digits = mant
	if dot >= 0:
		digits = mant.substr(0, dot) + mant.substr(dot + 1, mant.length())
		e10 -= mant.length() - dot - 1
	if digits == "" or not _all_digits(digits):
		return null
	var k = 0
	while k < digits.length() and digits.substr(k, 1) == "0":
		k += 1
	digits = digits.substr(k, digits.length())
	while digits.ends_with("0"):
		digits = digits.substr(0, digits.length() - 1)
		e10 += 1
	if digits == "":
		return _signed_zero(neg)
	var nd = digits.length()
	if nd + e10 > 310:
		return -INF if neg else INF
	if nd + e10 < -324:
		return _signed_zero(neg)
	# a first guess within a few units in the last place, then exact corrections
	var take = int(min(nd, 18))
	var d = int(digits.substr(0, take)) * 1.0  # (Godot 3's float(int) rounds to float32)
	var ep = e10 + nd - take
	var x
	if ep >= 0:
		x = d * pow(10.0, ep)
	elif ep >= -300:
		x = d / pow(10.0, -ep)
	else:
		x = d / pow(10.0, -ep - 300) / 1e300
	var bits = _bits(x)
	for iteration in range(64):
		var bx = (bits >> 52) & 0x7ff
		var bm = bits & 0xfffffffffffff
		var mm = bm
		var ee = -1074
		if bx != 0:
			mm = bm | 0x10000000000000
			ee = bx - 1075
		if bx == 0x7ff:
			mm = 0x10000000000000  # infinity stands for 2^1024 here
			ee = 972
		# above the midpoint to the next float (or on it with an odd mantissa): go up
		var up = _cmp_dec_bin(digits, e10, 2 * mm + 1, ee - 1)
		if bx != 0x7ff and (up > 0 or (up == 0 and (mm & 1) == 1)):
			bits += 1
			continue
		if mm == 0:
			break
		var lo
		if bm == 0 and bx > 1:
			lo = _cmp_dec_bin(digits, e10, 4 * mm - 1, ee - 2)  # the gap below is half
		else:
			lo = _cmp_dec_bin(digits, e10, 2 * mm - 1, ee - 1)
		if lo < 0 or (lo == 0 and (mm & 1) == 1):
			bits -= 1
			continue
		break
	_sp.clear()
	_sp.put_64(bits)
	_sp.seek(0)
	var v = _sp.get_double()
	return -v if neg else v


# (Godot 3 folds the literals 0.0 and -0.0 into one constant: make the sign at run time)
func _signed_zero(neg):
	var z = 0.0
	return -z if neg else z


func _is_int(s):
	if s.begins_with("-") or s.begins_with("+"):
		s = s.substr(1, s.length())
	return s != "" and _all_digits(s)


func _all_digits(s):
	for k in range(s.length()):
		var ch = s.substr(k, 1)
		if ch < "0" or ch > "9":
			return false
	return true


func _bits(x):
	_sp.clear()
	_sp.put_double(x)
	_sp.seek(0)
	return _sp.get_64()


func _zeros(n):
	var s = ""
	for k in range(n):
		s += "0"
	return s


# sign of digits * 10^e10 - b * 2^f (digits: decimal text, b: int >= 0)
func _cmp_dec_bin(digits, e10, b, f):
	var left = _big_from_digits(digits)
	var right = _big_from_int(b)
	if e10 > 0:
		_big_mul_pow10(left, e10)
	elif e10 < 0:
		_big_mul_pow10(right, -e10)
	if f > 0:
		_big_mul_pow2(right, f)
	elif f < 0:
		_big_mul_pow2(left, -f)
	return _big_cmp(left, right)


func _big_from_int(v):
	var a = []
	while v > 0:
		a.append(v % BASE)
		v = v / BASE
	return a


func _big_from_digits(s):
	var a = []
	var end = s.length()
	while end > 0:
		var start = int(max(0, end - 9))
		a.append(int(s.substr(start, end - start)))
		end = start
	return a


func _big_mul(a, f):
	var carry = 0
	for k in range(a.size()):
		var t = a[k] * f + carry
		a[k] = t % BASE
		carry = t / BASE
	while carry > 0:
		a.append(carry % BASE)
		carry = carry / BASE


func _big_mul_pow2(a, n):
	while n >= 29:
		_big_mul(a, 1 << 29)
		n -= 29
	if n > 0:
		_big_mul(a, 1 << n)


func _big_mul_pow5(a, n):
	while n >= 13:
		_big_mul(a, 1220703125)  # 5^13
		n -= 13
	if n > 0:
		_big_mul(a, int(pow(5, n)))


func _big_mul_pow10(a, n):
	if a.size() == 0:
		return
	var limbs = n / 9
	if limbs > 0:  # times 10^(9 * limbs): shift the limbs up
		var old = a.size()
		a.resize(old + limbs)
		for k in range(old - 1, -1, -1):
			a[k + limbs] = a[k]
		for k in range(limbs):
			a[k] = 0
	if n % 9 > 0:
		_big_mul(a, int(pow(10, n % 9)))


func _big_cmp(a, b):
	while a.size() > 0 and a[a.size() - 1] == 0:
		a.pop_back()
	while b.size() > 0 and b[b.size() - 1] == 0:
		b.pop_back()
	if a.size() != b.size():
		return 1 if a.size() > b.size() else -1
	for k in range(a.size() - 1, -1, -1):
		if a[k] != b[k]:
			return 1 if a[k] > b[k] else -1
	return 0


func _big_digits(a):
	if a.size() == 0:
		return "0"
	var s = str(a[a.size() - 1])
	for k in range(a.size() - 2, -1, -1):
		s += "%09d" % a[k]
	return s
