# npcadapt: what differs in Godot 3.x (3.2 and later). npcadapt.gd loads this file or
# compat_godot4.gd by Engine.get_version_info().major; everything else is shared.
# Only this file may name Godot 3 APIs (PoolByteArray, TYPE_REAL, subarray, to_utf8, ...).

const MAJOR = 3
const T_FLOAT = TYPE_REAL
const T_BYTES = TYPE_RAW_ARRAY
# typed arrays encoded as MessagePack arrays (PoolStringArray, PoolIntArray, PoolRealArray)
const T_LISTS = [TYPE_STRING_ARRAY, TYPE_INT_ARRAY, TYPE_REAL_ARRAY]
const T_STRING_NAME = -1  # no StringName values in Godot 3 scripts

var _abandoned = []  # name lookups given up on whose thread has not ended yet


func bytes():
	return PoolByteArray()


# bytes b[from:to], end exclusive (Godot 3's subarray is inclusive and refuses empty ranges)
func slice(b, from, to):
	if to <= from:
		return PoolByteArray()
	return b.subarray(from, to - 1)


func utf8(s):
	return s.to_utf8()


func float32_le(values, sp):
	# sp: a StreamPeerBuffer with big_endian = false, reused by the caller
	sp.clear()
	for x in values:
		sp.put_float(x)
	return sp.data_array


func join(parts, sep):
	return PoolStringArray(parts).join(sep)


func ticks_usec():
	return OS.get_ticks_usec()


func tcp_status(tcp):
	return tcp.get_status()  # Godot 3 polls the socket inside get_status


# Name lookups that never block the main thread. Godot 3's IP resolver holds its lock
# while it resolves, so even asking about a queued lookup (IP.get_resolve_item_status)
# waits for a slow DNS answer: a thread of our own calls IP.resolve_hostname instead.
# resolve_begin(host) gives a handle (null if no thread could start); resolve_poll(handle)
# the address once known, "" if the name does not resolve, null while still looking.
func resolve_begin(host):
	_reap()
	var lookup = Lookup.new()
	if lookup.start(host) != OK:
		return null
	return lookup


func resolve_poll(lookup):
	return lookup.poll()


# an unfinished lookup is left to end by itself (its thread is joined by a later call)
func resolve_cancel(lookup):
	if lookup.poll() == null:
		_abandoned.append(lookup)


func _reap():
	var still = []
	for lookup in _abandoned:
		if lookup.poll() == null:
			still.append(lookup)
	_abandoned = still


class Lookup:
	var address = null  # set by the thread: the address, or "" when the name does not resolve
	var _thread = Thread.new()
	var _mutex = Mutex.new()
	var _self = null  # this object, while its thread runs: it must outlive the thread

	func start(host):
		_self = self
		var err = _thread.start(self, "_run", host)
		if err != OK:
			_self = null
		return err

	func _run(host):
		var ip = IP.resolve_hostname(host)
		_mutex.lock()
		address = ip if typeof(ip) == TYPE_STRING and ip.is_valid_ip_address() else ""
		_mutex.unlock()

	func poll():
		if _self == null:
			return address
		if _mutex.try_lock() != OK:
			return null
		var a = address
		_mutex.unlock()
		if a != null:
			_thread.wait_to_finish()  # _run is returning
			_self = null
		return a


# One line of stdin without its newline, or null at the end of input. Godot 3.2 binds no
# OS.read_string_from_stdin and its File refuses pipes, so a shell reads the line (the
# shell's `read` takes one byte at a time from a pipe: nothing after the line is lost).
# OS.execute runs popen('"eval" "ARG"'): the outer shell expands $ and \" inside ARG,
# hence the escapes.
func read_stdin_line():
	if OS.has_method("read_string_from_stdin"):
		var s = OS.call("read_string_from_stdin")
		if s == "":
			return null
		return s.trim_suffix("\n").trim_suffix("\r")
	var out = []
	OS.execute("eval", ["IFS= read -r l; r=\\$?; if [ \\$r -eq 0 ] || [ -n \\\"\\$l\\\" ]; then printf 'L%s' \\\"\\$l\\\"; else printf E; fi"], true, out)
	var s = out[0] if out.size() > 0 else "E"
	if not s.begins_with("L"):
		return null
	return s.substr(1, s.length() - 1).trim_suffix("\r")
