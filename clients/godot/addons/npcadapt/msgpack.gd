# MessagePack encoder and decoder for the npcadapt bridge (Godot 3.2+ and Godot 4).
#
# Types: nil <-> null, bool, int (signed 64-bit; uint64 above 2^63-1 wraps), float
# (float64 by default, float32 with use_single_float, both decoded to float), str <->
# String, bin <-> byte array (PoolByteArray / PackedByteArray), array <-> Array, map <->
# Dictionary (insertion order kept). Typed arrays (PoolIntArray, PackedFloat32Array, ...)
# encode as arrays. Extension types are refused. The encoder writes the shortest form,
# like Python's msgpack with use_bin_type=True: positive ints as fixint/uint8..uint64,
# negative ones as negative fixint/int8..int64, str8 for 32-255 bytes.
#
# No `extends`: a RefCounted (Reference) in both versions. Create with
# preload("msgpack.gd").new(compat), compat being compat_godot3.gd or compat_godot4.gd.

const MAX_DEPTH = 512
const STR_CACHE_MAX = 1024  # cached encodings of short strings (method, archetype, ids)
const STR_CACHE_LEN = 64

var use_single_float = false
var error = ""  # why the last encode (or decode, since decode_begin) failed, "" when it did not

# stream decoding: true when decode_next() stopped at the end of the buffered bytes
var need_more = false

var _c
var _T_FLOAT
var _T_BYTES
var _T_LISTS
var _T_STRING_NAME
var _w  # StreamPeerBuffer, big endian: the encoder's output
var _le  # StreamPeerBuffer, little endian: float32 obs
var _r  # StreamPeerBuffer, big endian: the decoder's input
var _p = 0  # decoder position in _r (kept here: cheaper than asking _r)
var _n = 0  # bytes in _r
var _short = false
var _str_cache = {}


func _init(compat):
	_c = compat
	_T_FLOAT = compat.T_FLOAT
	_T_BYTES = compat.T_BYTES
	_T_LISTS = compat.T_LISTS
	_T_STRING_NAME = compat.T_STRING_NAME
	_w = StreamPeerBuffer.new()
	_w.big_endian = true
	_le = StreamPeerBuffer.new()
	_le.big_endian = false
	_r = StreamPeerBuffer.new()
	_r.big_endian = true


# ---------------------------------------------------------------- encoding

# The bytes of one value, or null (error says why).
func encode(value):
	error = ""
	_w.clear()
	_put(value, 0)
	if error != "":
		return null
	return _w.data_array


# A MessagePack-RPC request [0, msgid, method, params] (params an Array).
func encode_request(msgid, method, params):
	error = ""
	_w.clear()
	_w.put_u8(0x94)
	_w.put_u8(0)
	_put_int(msgid)
	_put_str(method)
	_put(params, 1)
	if error != "":
		return null
	return _w.data_array


# A notification [2, method, params].
func encode_notification(method, params):
	error = ""
	_w.clear()
	_w.put_u8(0x93)
	_w.put_u8(2)
	_put_str(method)
	_put(params, 1)
	if error != "":
		return null
	return _w.data_array


# float32 little-endian bytes of a list of numbers: the cheap obs form.
func float32_le(values):
	return _c.float32_le(values, _le)


func _put(v, depth):
	var t = typeof(v)
	if t == TYPE_STRING:
		_put_str(v)
	elif t == TYPE_INT:
		_put_int(v)
	elif t == _T_FLOAT:
		if use_single_float:
			_w.put_u8(0xca)
			_w.put_float(v)
		else:
			_w.put_u8(0xcb)
			_w.put_double(v)
	elif t == TYPE_NIL:
		_w.put_u8(0xc0)
	elif t == TYPE_BOOL:
		_w.put_u8(0xc3 if v else 0xc2)
	elif t == TYPE_ARRAY:
		if depth >= MAX_DEPTH:
			error = "cannot encode: nesting deeper than %d" % MAX_DEPTH
			return
		_put_len(v.size(), 0x90, 0xdc)
		for e in v:
			_put(e, depth + 1)
	elif t == TYPE_DICTIONARY:
		if depth >= MAX_DEPTH:
			error = "cannot encode: nesting deeper than %d" % MAX_DEPTH
			return
		_put_len(v.size(), 0x80, 0xde)
		for k in v:
			_put(k, depth + 1)
			_put(v[k], depth + 1)
	elif t == _T_BYTES:
		var n = v.size()
		if n < 256:
			_w.put_u8(0xc4)
			_w.put_u8(n)
		elif n < 65536:
			_w.put_u8(0xc5)
			_w.put_u16(n)
		else:
			_w.put_u8(0xc6)
			_w.put_u32(n)
		_w.put_data(v)
	elif t in _T_LISTS:
		_put_len(v.size(), 0x90, 0xdc)
		for e in v:
			_put(e, depth + 1)
	elif t == _T_STRING_NAME:
		_put_str(str(v))
	else:
		error = "cannot encode a value of Variant type %d" % t


# array (fix 0x90, 16-bit 0xdc) or map (fix 0x80, 16-bit 0xde) header
func _put_len(n, fix, h16):
	if n < 16:
		_w.put_u8(fix | n)
	elif n < 65536:
		_w.put_u8(h16)
		_w.put_u16(n)
	else:
		_w.put_u8(h16 + 1)
		_w.put_u32(n)


func _put_int(v):
	if v >= 0:
		if v < 128:
			_w.put_u8(v)
		elif v < 256:
			_w.put_u8(0xcc)
			_w.put_u8(v)
		elif v < 65536:
			_w.put_u8(0xcd)
			_w.put_u16(v)
		elif v < 4294967296:
			_w.put_u8(0xce)
			_w.put_u32(v)
		else:
			_w.put_u8(0xcf)
			_w.put_u64(v)
	elif v >= -32:
		_w.put_u8(v & 0xff)
	elif v >= -128:
		_w.put_u8(0xd0)
		_w.put_8(v)
	elif v >= -32768:
		_w.put_u8(0xd1)
		_w.put_16(v)
	elif v >= -2147483648:
		_w.put_u8(0xd2)
		_w.put_32(v)
	else:
		_w.put_u8(0xd3)
		_w.put_64(v)


func _put_str(s):
	var enc = _str_cache.get(s)
	if enc != null:
		_w.put_data(enc)
		return
	var b = _c.utf8(s)
	var n = b.size()
	enc = _c.bytes()
	if n < 32:
		enc.append(0xa0 | n)
	elif n < 256:
		enc.append(0xd9)
		enc.append(n)
	elif n < 65536:
		enc.append(0xda)
		enc.append(n >> 8)
		enc.append(n & 0xff)
	else:
		enc.append(0xdb)
		enc.append((n >> 24) & 0xff)
		enc.append((n >> 16) & 0xff)
		enc.append((n >> 8) & 0xff)
		enc.append(n & 0xff)
	enc.append_array(b)
	if s.length() <= STR_CACHE_LEN:
		if _str_cache.size() >= STR_CACHE_MAX:
			_str_cache.clear()
		_str_cache[s] = enc
	_w.put_data(enc)


# ---------------------------------------------------------------- decoding

# One whole value from bytes; null with error set when the bytes are not exactly one value.
func decode(bytes):
	error = ""
	decode_begin(bytes)
	var v = decode_next()
	if error != "":
		return null
	if need_more:
		error = "truncated MessagePack: %d bytes end inside a value" % _n
		return null
	if _p != _n:
		error = "%d bytes left after the value" % (_n - _p)
		return null
	return v


# Stream decoding: decode_begin(bytes), then decode_next() until need_more or error;
# decode_offset() is where the unread (incomplete) part starts. decode_begin clears
# `error`: an encoding failure before it does not taint the decoding.
func decode_begin(bytes):
	_r.data_array = bytes
	_p = 0
	_n = bytes.size()
	need_more = false
	error = ""


func decode_next():
	var start = _p
	_short = false
	need_more = false
	var v = _dec(0)
	if _short or error != "":
		need_more = _short and error == ""
		_p = start
		_r.seek(start)
		return null
	return v


func decode_offset():
	return _p


func decode_pending():
	return _n - _p


func _dec(depth):
	if _p >= _n:
		_short = true
		return null
	var b = _r.get_u8()
	_p += 1
	if b < 0x80:
		return b
	if b >= 0xe0:
		return b - 256
	if b >= 0xa0 and b < 0xc0:
		return _str(b & 0x1f)
	if b < 0x90:
		return _map(b & 0x0f, depth)
	if b < 0xa0:
		return _arr(b & 0x0f, depth)
	if b == 0xc0:
		return null
	if b == 0xc2:
		return false
	if b == 0xc3:
		return true
	if b == 0xca:
		if _p + 4 > _n:
			_short = true
			return null
		_p += 4
		return _r.get_float()
	if b == 0xcb:
		if _p + 8 > _n:
			_short = true
			return null
		_p += 8
		return _r.get_double()
	if b >= 0xcc and b <= 0xd3:
		var size = 1 << ((b - 0xcc) & 3)
		if _p + size > _n:
			_short = true
			return null
		_p += size
		if b == 0xcc:
			return _r.get_u8()
		if b == 0xcd:
			return _r.get_u16()
		if b == 0xce:
			return _r.get_u32()
		if b == 0xcf:
			return _r.get_u64()
		if b == 0xd0:
			return _r.get_8()
		if b == 0xd1:
			return _r.get_16()
		if b == 0xd2:
			return _r.get_32()
		return _r.get_64()
	if b >= 0xd9 and b <= 0xdb:
		var n = _len(b - 0xd9)
		if _short:
			return null
		return _str(n)
	if b >= 0xc4 and b <= 0xc6:
		var n = _len(b - 0xc4)
		if _short:
			return null
		if _p + n > _n:
			_short = true
			return null
		_p += n
		if n == 0:
			return _c.bytes()
		return _r.get_data(n)[1]
	if b == 0xdc or b == 0xdd:
		var n = _len(b - 0xdb)
		if _short:
			return null
		return _arr(n, depth)
	if b == 0xde or b == 0xdf:
		var n = _len(b - 0xdd)
		if _short:
			return null
		return _map(n, depth)
	if b == 0xc1:
		error = "byte 0xc1 is not MessagePack"
	else:
		error = "MessagePack extension types are not supported (byte 0x%x)" % b
	return null


# a length of 1 << k bytes (k = 0, 1, 2)
func _len(k):
	if k == 0:
		if _p + 1 > _n:
			_short = true
			return 0
		_p += 1
		return _r.get_u8()
	if k == 1:
		if _p + 2 > _n:
			_short = true
			return 0
		_p += 2
		return _r.get_u16()
	if _p + 4 > _n:
		_short = true
		return 0
	_p += 4
	return _r.get_u32()


func _str(n):
	if n == 0:
		return ""
	if _p + n > _n:
		_short = true
		return null
	_p += n
	return _r.get_utf8_string(n)


func _arr(n, depth):
	if depth >= MAX_DEPTH:
		error = "MessagePack nested deeper than %d" % MAX_DEPTH
		return null
	if n > _n - _p:  # every element takes a byte at least
		_short = true
		return null
	var a = []
	a.resize(n)
	for i in range(n):
		a[i] = _dec(depth + 1)
		if _short or error != "":
			return null
	return a


func _map(n, depth):
	if depth >= MAX_DEPTH:
		error = "MessagePack nested deeper than %d" % MAX_DEPTH
		return null
	if n * 2 > _n - _p:
		_short = true
		return null
	var m = {}
	for i in range(n):
		var k = _dec(depth + 1)
		if _short or error != "":
			return null
		var v = _dec(depth + 1)
		if _short or error != "":
			return null
		m[k] = v
	return m


# ---------------------------------------------------------------- framing

# How far the value that starts at state[0] reaches, without decoding it: a reply that
# arrives over many reads is then decoded once, when it is complete, instead of from its
# start at every read. Resumable: state is [position, values still to skip], [start, 1] at
# first; scan looks at bytes[state[0]:n], updates state and returns true once the value is
# complete (its end is state[0]) or false when it needs more bytes (call it again with
# them: only the new bytes are looked at). Reads type bytes and lengths only. A byte that
# starts no value (0xc1, extension types) also gives true: decoding reports it.
func scan(bytes, n, state):
	var p = state[0]
	var pending = state[1]
	while pending > 0 and p < n:
		var t = bytes[p]
		var size = 1  # header and body of this value; its elements are counted in pending
		var kids = 0
		if t < 0x80 or t >= 0xe0:
			pass
		elif t >= 0xa0 and t < 0xc0:
			size = 1 + (t & 0x1f)
		elif t < 0x90:
			kids = 2 * (t & 0x0f)
		elif t < 0xa0:
			kids = t & 0x0f
		elif t == 0xca or t == 0xce or t == 0xd2:
			size = 5
		elif t == 0xcb or t == 0xcf or t == 0xd3:
			size = 9
		elif t == 0xcc or t == 0xd0:
			size = 2
		elif t == 0xcd or t == 0xd1:
			size = 3
		elif t == 0xc0 or t == 0xc2 or t == 0xc3:
			pass
		elif t == 0xd9 or t == 0xc4:
			if p + 2 > n:
				break
			size = 2 + bytes[p + 1]
		elif t == 0xda or t == 0xc5:
			if p + 3 > n:
				break
			size = 3 + ((bytes[p + 1] << 8) | bytes[p + 2])
		elif t == 0xdb or t == 0xc6:
			if p + 5 > n:
				break
			size = 5 + ((bytes[p + 1] << 24) | (bytes[p + 2] << 16) | (bytes[p + 3] << 8) | bytes[p + 4])
		elif t == 0xdc or t == 0xde:
			if p + 3 > n:
				break
			size = 3
			kids = (bytes[p + 1] << 8) | bytes[p + 2]
			if t == 0xde:
				kids *= 2
		elif t == 0xdd or t == 0xdf:
			if p + 5 > n:
				break
			size = 5
			kids = (bytes[p + 1] << 24) | (bytes[p + 2] << 16) | (bytes[p + 3] << 8) | bytes[p + 4]
			if t == 0xdf:
				kids *= 2
		else:
			state[0] = p
			state[1] = 0
			return true
		p += size
		pending += kids - 1
	state[0] = p
	state[1] = pending
	return pending == 0 and p <= n
