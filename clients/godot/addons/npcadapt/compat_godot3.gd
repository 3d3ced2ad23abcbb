# npcadapt: what differs in Godot 3.x (3.2 and later). npcadapt.gd loads this file or
# compat_godot4.gd by Engine.get_version_info().major; everything else is shared.
# Only this file may name Godot 3 APIs (PoolByteArray, TYPE_REAL, subarray, to_utf8, ...).

const MAJOR = 3
const T_FLOAT = TYPE_REAL
const T_BYTES = TYPE_RAW_ARRAY
# typed arrays encoded as MessagePack arrays (PoolStringArray, PoolIntArray, PoolRealArray)
const T_LISTS = [TYPE_STRING_ARRAY, TYPE_INT_ARRAY, TYPE_REAL_ARRAY]
const T_STRING_NAME = -1  # no StringName values in Godot 3 scripts


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
