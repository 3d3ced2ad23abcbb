# npcadapt: what differs in Godot 4.x. NOT RUN HERE: only Godot 3.2.3 is installed where
# this addon is tested; this file is written against the Godot 4 API docs. npcadapt.gd
# loads it when Engine.get_version_info().major >= 4.

const MAJOR = 4
const T_FLOAT = TYPE_FLOAT
const T_BYTES = TYPE_PACKED_BYTE_ARRAY
const T_LISTS = [TYPE_PACKED_STRING_ARRAY, TYPE_PACKED_INT32_ARRAY, TYPE_PACKED_INT64_ARRAY,
		TYPE_PACKED_FLOAT32_ARRAY, TYPE_PACKED_FLOAT64_ARRAY]
const T_STRING_NAME = TYPE_STRING_NAME


func bytes():
	return PackedByteArray()


func slice(b, from, to):
	return b.slice(from, to)


func utf8(s):
	return s.to_utf8_buffer()


func float32_le(values, sp):
	return PackedFloat32Array(values).to_byte_array()  # little-endian on every Godot 4 target


func join(parts, sep):
	return sep.join(PackedStringArray(parts))


func ticks_usec():
	return Time.get_ticks_usec()


func tcp_status(tcp):
	tcp.poll()  # Godot 4 updates the status only in poll()
	return tcp.get_status()


# Name lookups that never block: the engine's resolver thread (Godot 4 reads a queued
# lookup's status without taking the resolver's lock). resolve_begin(host) gives a handle
# (null if the resolver's queue is full); resolve_poll(handle) the address once known, ""
# if the name does not resolve, null while still looking.
func resolve_begin(host):
	var id = IP.resolve_hostname_queue_item(host, IP.TYPE_ANY)
	return null if id == IP.RESOLVER_INVALID_ID else id


func resolve_poll(id):
	var st = IP.get_resolve_item_status(id)
	if st == IP.RESOLVER_STATUS_WAITING:
		return null
	var ip = IP.get_resolve_item_address(id) if st == IP.RESOLVER_STATUS_DONE else ""
	IP.erase_resolve_item(id)
	return ip


func resolve_cancel(id):
	IP.erase_resolve_item(id)


func read_stdin_line():
	var s = OS.read_string_from_stdin()
	if s == "":
		return null
	return s.trim_suffix("\n").trim_suffix("\r")
