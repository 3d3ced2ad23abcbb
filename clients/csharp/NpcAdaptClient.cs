// NpcAdaptClient.cs: a single-file C# client for the npcadapt bridge (`npcadapt serve`).
//
// The bridge speaks MessagePack-RPC over one TCP connection (docs/protocol.md). This client
// is made for a game loop: every call sends at once and returns a request id; Poll(),
// called once per frame (MonoBehaviour.Update), reads whatever has arrived without
// blocking and completes requests, matching replies by msgid (they may come out of order).
// Take results with TryTake(id, out reply) or pass a callback, which Poll() invokes on the
// caller's thread (so Unity APIs are safe inside it).
//
// A dropped connection fails every pending request with code -1 ("connection lost ...");
// the next call or Poll() reconnects by itself after a small backoff (and re-sends the
// token, when there is one). Poll() never throws.
//
// The MessagePack codec is built in (MsgPackCodec) and can be swapped for another one
// (e.g. MessagePack-CSharp) through IMsgPackCodec; see README.md.
//
// Not thread-safe: use one client from one thread (Unity's main thread).

using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.Net;
using System.Net.Sockets;
using System.Runtime.InteropServices;
using System.Text;

namespace NpcAdapt
{
    /// <summary>The bridge's error codes; -1 is the client's own (cannot connect, connection lost, timed out).</summary>
    public static class ErrorCodes
    {
        public const int ClientError = -1;
        public const int InvalidRequest = 1;
        public const int MethodNotFound = 2;
        public const int InvalidParams = 3;
        public const int InternalError = 4;
        public const int Unauthorized = 5;
        public const int Overloaded = 6;
    }

    /// <summary>How Act/ActBatch/ActionProbs send observations.</summary>
    public enum ObsEncoding
    {
        /// <summary>A bin of float32 little-endian (4 bytes per number): the cheap form, the default.</summary>
        Float32Bin = 0,
        /// <summary>An array of float64 numbers.</summary>
        List = 1,
    }

    public enum ConnectionState
    {
        Disconnected = 0,
        Connecting = 1,
        Connected = 2,
        Closed = 3,
    }

    /// <summary>Bytes that are not valid MessagePack for the protocol (or a value the codec cannot write).</summary>
    public sealed class MsgPackException : Exception
    {
        public MsgPackException(string message) : base(message) { }
    }

    /// <summary>A growable byte buffer: Data[0, Length) holds the bytes. Reused, never shrunk.</summary>
    public sealed class ByteBuffer
    {
        public byte[] Data;
        public int Length;

        public ByteBuffer(int capacity = 256)
        {
            Data = new byte[Math.Max(16, capacity)];
        }

        public void Clear()
        {
            Length = 0;
        }

        /// <summary>Makes room for `extra` more bytes after Length.</summary>
        public void Ensure(int extra)
        {
            long need = (long)Length + extra;
            if (need <= Data.Length) return;
            if (need > int.MaxValue) throw new MsgPackException("message larger than 2 GiB");
            long size = Data.Length;
            while (size < need) size *= 2;
            Array.Resize(ref Data, (int)Math.Min(size, int.MaxValue));
        }

        public void Append(byte b)
        {
            if (Length == Data.Length) Ensure(1);
            Data[Length++] = b;
        }

        public void Append(byte[] src, int offset, int count)
        {
            Ensure(count);
            Buffer.BlockCopy(src, offset, Data, Length, count);
            Length += count;
        }

        /// <summary>
        /// Empty and grown past max(4 x capacity, 1 MiB) (one huge message): back to `capacity`
        /// bytes, so that the memory goes back.
        /// </summary>
        public void ShrinkIfEmpty(int capacity)
        {
            if (Length == 0 && Data.Length > Math.Max(4 * capacity, 1 << 20)) Data = new byte[capacity];
        }

        /// <summary>Removes the first `count` bytes.</summary>
        public void Consume(int count)
        {
            if (count <= 0) return;
            if (count >= Length)
            {
                Length = 0;
                return;
            }
            Buffer.BlockCopy(Data, count, Data, 0, Length - count);
            Length -= count;
        }

        public byte[] ToArray()
        {
            var a = new byte[Length];
            Buffer.BlockCopy(Data, 0, a, 0, Length);
            return a;
        }
    }

    /// <summary>
    /// The MessagePack layer the client uses; implement it to plug in another library.
    /// Values the client hands to Encode*: null, bool, string, int/long/uint/ulong (and the
    /// smaller ints), float (write float32), double (float64), byte[] (bin), bool[], double[],
    /// object[] / IList (array), IDictionary with string keys (map). Values TryDecode must
    /// produce: null, bool, integers (any integral type; long preferred), float or double,
    /// string, byte[], IList (object[] preferred), IDictionary with string keys
    /// (Dictionary&lt;string, object&gt; preferred).
    /// </summary>
    public interface IMsgPackCodec
    {
        /// <summary>Appends the request [0, msgid, method, args] to output.</summary>
        void EncodeRequest(ByteBuffer output, uint msgid, string method, object[] args);

        /// <summary>Appends the notification [2, method, args] to output.</summary>
        void EncodeNotification(ByteBuffer output, string method, object[] args);

        /// <summary>Appends one value to output.</summary>
        void EncodeValue(ByteBuffer output, object value);

        /// <summary>
        /// Decodes the one whole value that starts at data[offset] (count bytes available).
        /// Returns the bytes it used, or 0 when the value is incomplete (message = null).
        /// Throws (e.g. MsgPackException) on bytes that are not valid MessagePack.
        /// </summary>
        int TryDecode(byte[] data, int offset, int count, out object message);
    }

    [StructLayout(LayoutKind.Explicit)]
    internal struct FloatBits
    {
        [FieldOffset(0)] public float F32;
        [FieldOffset(0)] public uint U32;
        [FieldOffset(0)] public double F64;
        [FieldOffset(0)] public ulong U64;
    }

    /// <summary>Writes MessagePack in its shortest form (as Python's msgpack with use_bin_type=True).</summary>
    public static class MsgPackWriter
    {
        public static void WriteNil(ByteBuffer b)
        {
            b.Append(0xc0);
        }

        public static void WriteBool(ByteBuffer b, bool v)
        {
            b.Append(v ? (byte)0xc3 : (byte)0xc2);
        }

        public static void WriteInt(ByteBuffer b, long v)
        {
            if (v >= 0)
            {
                WriteUInt(b, (ulong)v);
                return;
            }
            b.Ensure(9);
            byte[] d = b.Data;
            int p = b.Length;
            if (v >= -32)
            {
                d[p++] = (byte)(sbyte)v;
            }
            else if (v >= sbyte.MinValue)
            {
                d[p++] = 0xd0;
                d[p++] = (byte)(sbyte)v;
            }
            else if (v >= short.MinValue)
            {
                d[p++] = 0xd1;
                p = Put16(d, p, (uint)v);
            }
            else if (v >= int.MinValue)
            {
                d[p++] = 0xd2;
                p = Put32(d, p, (uint)v);
            }
            else
            {
                d[p++] = 0xd3;
                p = Put64(d, p, (ulong)v);
            }
            b.Length = p;
        }

        public static void WriteUInt(ByteBuffer b, ulong v)
        {
            b.Ensure(9);
            byte[] d = b.Data;
            int p = b.Length;
            if (v < 0x80)
            {
                d[p++] = (byte)v;
            }
            else if (v <= 0xff)
            {
                d[p++] = 0xcc;
                d[p++] = (byte)v;
            }
            else if (v <= 0xffff)
            {
                d[p++] = 0xcd;
                p = Put16(d, p, (uint)v);
            }
            else if (v <= 0xffffffffUL)
            {
                d[p++] = 0xce;
                p = Put32(d, p, (uint)v);
            }
            else
            {
                d[p++] = 0xcf;
                p = Put64(d, p, v);
            }
            b.Length = p;
        }

        public static void WriteFloat32(ByteBuffer b, float v)
        {
            FloatBits bits = default(FloatBits);
            bits.F32 = v;
            b.Ensure(5);
            b.Data[b.Length] = 0xca;
            b.Length = Put32(b.Data, b.Length + 1, bits.U32);
        }

        public static void WriteFloat64(ByteBuffer b, double v)
        {
            FloatBits bits = default(FloatBits);
            bits.F64 = v;
            b.Ensure(9);
            b.Data[b.Length] = 0xcb;
            b.Length = Put64(b.Data, b.Length + 1, bits.U64);
        }

        public static void WriteString(ByteBuffer b, string s)
        {
            if (s == null)
            {
                WriteNil(b);
                return;
            }
            int n = s.Length;
            bool ascii = true;
            for (int i = 0; i < n; i++)
            {
                if (s[i] >= 0x80)
                {
                    ascii = false;
                    break;
                }
            }
            int bytes = ascii ? n : Encoding.UTF8.GetByteCount(s);
            WriteStringHeader(b, bytes);
            b.Ensure(bytes);
            if (ascii)
            {
                byte[] d = b.Data;
                int p = b.Length;
                for (int i = 0; i < n; i++) d[p + i] = (byte)s[i];
            }
            else
            {
                Encoding.UTF8.GetBytes(s, 0, n, b.Data, b.Length);
            }
            b.Length += bytes;
        }

        public static void WriteStringHeader(ByteBuffer b, int bytes)
        {
            b.Ensure(5);
            byte[] d = b.Data;
            int p = b.Length;
            if (bytes < 32)
            {
                d[p++] = (byte)(0xa0 | bytes);
            }
            else if (bytes <= 0xff)
            {
                d[p++] = 0xd9;
                d[p++] = (byte)bytes;
            }
            else if (bytes <= 0xffff)
            {
                d[p++] = 0xda;
                p = Put16(d, p, (uint)bytes);
            }
            else
            {
                d[p++] = 0xdb;
                p = Put32(d, p, (uint)bytes);
            }
            b.Length = p;
        }

        public static void WriteBinHeader(ByteBuffer b, int bytes)
        {
            b.Ensure(5);
            byte[] d = b.Data;
            int p = b.Length;
            if (bytes <= 0xff)
            {
                d[p++] = 0xc4;
                d[p++] = (byte)bytes;
            }
            else if (bytes <= 0xffff)
            {
                d[p++] = 0xc5;
                p = Put16(d, p, (uint)bytes);
            }
            else
            {
                d[p++] = 0xc6;
                p = Put32(d, p, (uint)bytes);
            }
            b.Length = p;
        }

        public static void WriteBin(ByteBuffer b, byte[] data, int offset, int count)
        {
            WriteBinHeader(b, count);
            b.Append(data, offset, count);
        }

        /// <summary>A bin of count float32 little-endian values: the cheap observation form.</summary>
        public static void WriteFloat32LEBin(ByteBuffer b, float[] values, int count)
        {
            WriteBinHeader(b, count * 4);
            b.Ensure(count * 4);
            byte[] d = b.Data;
            int p = b.Length;
            FloatBits bits = default(FloatBits);
            for (int i = 0; i < count; i++)
            {
                bits.F32 = values[i];
                uint u = bits.U32;
                d[p] = (byte)u;
                d[p + 1] = (byte)(u >> 8);
                d[p + 2] = (byte)(u >> 16);
                d[p + 3] = (byte)(u >> 24);
                p += 4;
            }
            b.Length = p;
        }

        public static void WriteArrayHeader(ByteBuffer b, int n)
        {
            b.Ensure(5);
            byte[] d = b.Data;
            int p = b.Length;
            if (n < 16)
            {
                d[p++] = (byte)(0x90 | n);
            }
            else if (n <= 0xffff)
            {
                d[p++] = 0xdc;
                p = Put16(d, p, (uint)n);
            }
            else
            {
                d[p++] = 0xdd;
                p = Put32(d, p, (uint)n);
            }
            b.Length = p;
        }

        public static void WriteMapHeader(ByteBuffer b, int n)
        {
            b.Ensure(5);
            byte[] d = b.Data;
            int p = b.Length;
            if (n < 16)
            {
                d[p++] = (byte)(0x80 | n);
            }
            else if (n <= 0xffff)
            {
                d[p++] = 0xde;
                p = Put16(d, p, (uint)n);
            }
            else
            {
                d[p++] = 0xdf;
                p = Put32(d, p, (uint)n);
            }
            b.Length = p;
        }

        /// <summary>Writes any supported value (see IMsgPackCodec); throws MsgPackException for others.</summary>
        public static void WriteValue(ByteBuffer b, object v)
        {
            WriteValue(b, v, 0);
        }

        private static void WriteValue(ByteBuffer b, object v, int depth)
        {
            if (depth > 1024) throw new MsgPackException("value nested deeper than 1024 levels");
            if (v == null) { WriteNil(b); return; }
            string s = v as string;
            if (s != null) { WriteString(b, s); return; }
            if (v is bool) { WriteBool(b, (bool)v); return; }
            if (v is long) { WriteInt(b, (long)v); return; }
            if (v is int) { WriteInt(b, (int)v); return; }
            if (v is double) { WriteFloat64(b, (double)v); return; }
            if (v is float) { WriteFloat32(b, (float)v); return; }
            byte[] bytes = v as byte[];
            if (bytes != null) { WriteBin(b, bytes, 0, bytes.Length); return; }
            if (v is uint) { WriteUInt(b, (uint)v); return; }
            if (v is ulong) { WriteUInt(b, (ulong)v); return; }
            if (v is short) { WriteInt(b, (short)v); return; }
            if (v is ushort) { WriteUInt(b, (ushort)v); return; }
            if (v is byte) { WriteUInt(b, (byte)v); return; }
            if (v is sbyte) { WriteInt(b, (sbyte)v); return; }
            if (v is ArraySegment<byte>)
            {
                var seg = (ArraySegment<byte>)v;
                WriteBin(b, seg.Array, seg.Offset, seg.Count);
                return;
            }
            var dict = v as IDictionary;
            if (dict != null)
            {
                WriteMapHeader(b, dict.Count);
                foreach (DictionaryEntry e in dict)
                {
                    WriteValue(b, e.Key, depth + 1);
                    WriteValue(b, e.Value, depth + 1);
                }
                return;
            }
            var objs = v as object[];
            if (objs != null)
            {
                WriteArrayHeader(b, objs.Length);
                for (int i = 0; i < objs.Length; i++) WriteValue(b, objs[i], depth + 1);
                return;
            }
            var doubles = v as double[];
            if (doubles != null)
            {
                WriteArrayHeader(b, doubles.Length);
                for (int i = 0; i < doubles.Length; i++) WriteFloat64(b, doubles[i]);
                return;
            }
            var bools = v as bool[];
            if (bools != null)
            {
                WriteArrayHeader(b, bools.Length);
                for (int i = 0; i < bools.Length; i++) WriteBool(b, bools[i]);
                return;
            }
            var list = v as IList;
            if (list != null)
            {
                WriteArrayHeader(b, list.Count);
                for (int i = 0; i < list.Count; i++) WriteValue(b, list[i], depth + 1);
                return;
            }
            throw new MsgPackException("cannot encode a value of type " + v.GetType().Name);
        }

        private static int Put16(byte[] d, int p, uint v)
        {
            d[p] = (byte)(v >> 8);
            d[p + 1] = (byte)v;
            return p + 2;
        }

        private static int Put32(byte[] d, int p, uint v)
        {
            d[p] = (byte)(v >> 24);
            d[p + 1] = (byte)(v >> 16);
            d[p + 2] = (byte)(v >> 8);
            d[p + 3] = (byte)v;
            return p + 4;
        }

        private static int Put64(byte[] d, int p, ulong v)
        {
            Put32(d, p, (uint)(v >> 32));
            return Put32(d, p + 4, (uint)v);
        }
    }

    /// <summary>
    /// The built-in codec: nil, bool, every int width, float32/float64, str, bin, array and map.
    /// Decodes to null, bool, long (ulong above long.MaxValue), float (float32), double
    /// (float64), string, byte[], object[] and Dictionary&lt;string, object&gt; (str or bin
    /// keys only, as the protocol requires). Extension types are refused. Not thread-safe
    /// (it caches short strings): one instance per client.
    /// </summary>
    public sealed class MsgPackCodec : IMsgPackCodec
    {
        /// <summary>Arrays and maps nested deeper than this are refused.</summary>
        public const int MaxDepth = 1024;

        private static readonly UTF8Encoding StrictUtf8 = new UTF8Encoding(false, true);
        private static readonly object True = true;
        private static readonly object False = false;
        private static readonly object[] SmallInts = MakeSmallInts();
        private static readonly object[] EmptyArray = new object[0];

        // Short ASCII strings (map keys, action names) are decoded once and reused.
        private const int CacheSlots = 256;
        private const int CacheMaxLength = 24;
        private readonly string[] _strCache = new string[CacheSlots];

        private static object[] MakeSmallInts()
        {
            var a = new object[256 + 32];
            for (int i = 0; i < a.Length; i++) a[i] = (long)(i - 32);
            return a;
        }

        private static object BoxLong(long v)
        {
            if (v >= -32 && v < 256) return SmallInts[v + 32];
            return v;
        }

        public void EncodeRequest(ByteBuffer output, uint msgid, string method, object[] args)
        {
            output.Ensure(2);
            output.Data[output.Length] = 0x94;
            output.Data[output.Length + 1] = 0x00;
            output.Length += 2;
            MsgPackWriter.WriteUInt(output, msgid);
            MsgPackWriter.WriteString(output, method);
            WriteArgs(output, args);
        }

        public void EncodeNotification(ByteBuffer output, string method, object[] args)
        {
            output.Ensure(2);
            output.Data[output.Length] = 0x93;
            output.Data[output.Length + 1] = 0x02;
            output.Length += 2;
            MsgPackWriter.WriteString(output, method);
            WriteArgs(output, args);
        }

        private static void WriteArgs(ByteBuffer output, object[] args)
        {
            if (args == null)
            {
                MsgPackWriter.WriteArrayHeader(output, 0);
                return;
            }
            MsgPackWriter.WriteArrayHeader(output, args.Length);
            for (int i = 0; i < args.Length; i++) MsgPackWriter.WriteValue(output, args[i]);
        }

        public void EncodeValue(ByteBuffer output, object value)
        {
            MsgPackWriter.WriteValue(output, value);
        }

        public int TryDecode(byte[] data, int offset, int count, out object message)
        {
            message = null;
            long end = Scan(data, offset, offset + count);
            if (end < 0) return 0;
            int p = offset;
            message = Decode(data, ref p, 0);
            return p - offset;
        }

        /// <summary>
        /// The end offset of the whole value starting at `offset`, or -1 when it is not complete
        /// within [offset, end). Checks the type bytes; allocates nothing.
        /// </summary>
        public static long Scan(byte[] d, int offset, int end)
        {
            long pending = 1; // values still to skip
            long p = offset;
            while (pending > 0)
            {
                if (p >= end) return -1;
                int t = d[p];
                pending--;
                if (t <= 0x7f || t >= 0xe0) { p++; continue; }
                if (t <= 0x8f) { pending += 2 * (t & 0x0f); p++; continue; }
                if (t <= 0x9f) { pending += t & 0x0f; p++; continue; }
                if (t <= 0xbf) { p += 1 + (t & 0x1f); continue; }
                switch (t)
                {
                    case 0xc0: case 0xc2: case 0xc3: p += 1; break;
                    case 0xcc: case 0xd0: p += 2; break;
                    case 0xcd: case 0xd1: p += 3; break;
                    case 0xca: case 0xce: case 0xd2: p += 5; break;
                    case 0xcb: case 0xcf: case 0xd3: p += 9; break;
                    case 0xc4: case 0xd9:
                        if (p + 2 > end) return -1;
                        p += 2 + d[p + 1];
                        break;
                    case 0xc5: case 0xda:
                        if (p + 3 > end) return -1;
                        p += 3 + Get16(d, (int)p + 1);
                        break;
                    case 0xc6: case 0xdb:
                        if (p + 5 > end) return -1;
                        p += 5 + (long)Get32(d, (int)p + 1);
                        break;
                    case 0xdc:
                        if (p + 3 > end) return -1;
                        pending += Get16(d, (int)p + 1);
                        p += 3;
                        break;
                    case 0xdd:
                        if (p + 5 > end) return -1;
                        pending += Get32(d, (int)p + 1);
                        p += 5;
                        break;
                    case 0xde:
                        if (p + 3 > end) return -1;
                        pending += 2L * Get16(d, (int)p + 1);
                        p += 3;
                        break;
                    case 0xdf:
                        if (p + 5 > end) return -1;
                        pending += 2L * Get32(d, (int)p + 1);
                        p += 5;
                        break;
                    case 0xc1:
                        throw new MsgPackException("bytes are not valid MessagePack (0xc1)");
                    default: // 0xc7-0xc9, 0xd4-0xd8
                        throw new MsgPackException("extension types are not allowed (0x" + t.ToString("x2") + ")");
                }
            }
            return p <= end ? p : -1;
        }

        /// <summary>Decodes the complete value at d[p] (checked by Scan first) and moves p past it.</summary>
        private object Decode(byte[] d, ref int p, int depth)
        {
            int t = d[p++];
            if (t <= 0x7f) return SmallInts[t + 32];
            if (t >= 0xe0) return SmallInts[t - 256 + 32];
            if (t <= 0x8f) return DecodeMap(d, ref p, t & 0x0f, depth);
            if (t <= 0x9f) return DecodeArray(d, ref p, t & 0x0f, depth);
            if (t <= 0xbf) return DecodeString(d, ref p, t & 0x1f);
            FloatBits bits = default(FloatBits);
            int n;
            switch (t)
            {
                case 0xc0: return null;
                case 0xc2: return False;
                case 0xc3: return True;
                case 0xcc: return SmallInts[d[p++] + 32];
                case 0xcd: n = Get16(d, p); p += 2; return BoxLong(n);
                case 0xce: { long v = Get32(d, p); p += 4; return BoxLong(v); }
                case 0xcf:
                    {
                        ulong v = Get64(d, p);
                        p += 8;
                        if (v > long.MaxValue) return v;
                        return BoxLong((long)v);
                    }
                case 0xd0: return BoxLong((sbyte)d[p++]);
                case 0xd1: { long v = (short)Get16(d, p); p += 2; return BoxLong(v); }
                case 0xd2: { long v = (int)Get32(d, p); p += 4; return BoxLong(v); }
                case 0xd3: { long v = (long)Get64(d, p); p += 8; return BoxLong(v); }
                case 0xca: bits.U32 = Get32(d, p); p += 4; return bits.F32;
                case 0xcb: bits.U64 = Get64(d, p); p += 8; return bits.F64;
                case 0xd9: n = d[p++]; return DecodeString(d, ref p, n);
                case 0xda: n = Get16(d, p); p += 2; return DecodeString(d, ref p, n);
                case 0xdb: n = Length32(d, p); p += 4; return DecodeString(d, ref p, n);
                case 0xc4: n = d[p++]; return DecodeBin(d, ref p, n);
                case 0xc5: n = Get16(d, p); p += 2; return DecodeBin(d, ref p, n);
                case 0xc6: n = Length32(d, p); p += 4; return DecodeBin(d, ref p, n);
                case 0xdc: n = Get16(d, p); p += 2; return DecodeArray(d, ref p, n, depth);
                case 0xdd: n = Length32(d, p); p += 4; return DecodeArray(d, ref p, n, depth);
                case 0xde: n = Get16(d, p); p += 2; return DecodeMap(d, ref p, n, depth);
                case 0xdf: n = Length32(d, p); p += 4; return DecodeMap(d, ref p, n, depth);
                default: throw new MsgPackException("unexpected type byte 0x" + t.ToString("x2"));
            }
        }

        private static int Length32(byte[] d, int p)
        {
            uint n = Get32(d, p);
            if (n > int.MaxValue) throw new MsgPackException("length " + n + " too large");
            return (int)n;
        }

        private object DecodeArray(byte[] d, ref int p, int n, int depth)
        {
            if (depth >= MaxDepth) throw new MsgPackException("nesting deeper than " + MaxDepth + " levels");
            if (n == 0) return EmptyArray;
            var a = new object[n];
            for (int i = 0; i < n; i++) a[i] = Decode(d, ref p, depth + 1);
            return a;
        }

        private object DecodeMap(byte[] d, ref int p, int n, int depth)
        {
            if (depth >= MaxDepth) throw new MsgPackException("nesting deeper than " + MaxDepth + " levels");
            var m = new Dictionary<string, object>(n);
            for (int i = 0; i < n; i++)
            {
                object k = Decode(d, ref p, depth + 1);
                string key = k as string;
                if (key == null)
                {
                    byte[] kb = k as byte[];
                    if (kb == null)
                    {
                        throw new MsgPackException("map key of type " + (k == null ? "nil" : k.GetType().Name) + " not allowed");
                    }
                    key = StrictUtf8.GetString(kb);
                }
                m[key] = Decode(d, ref p, depth + 1);
            }
            return m;
        }

        private static byte[] DecodeBin(byte[] d, ref int p, int n)
        {
            var a = new byte[n];
            Buffer.BlockCopy(d, p, a, 0, n);
            p += n;
            return a;
        }

        private string DecodeString(byte[] d, ref int p, int n)
        {
            if (n == 0) return string.Empty;
            if (n <= CacheMaxLength)
            {
                uint h = 2166136261;
                bool ascii = true;
                for (int i = 0; i < n; i++)
                {
                    byte c = d[p + i];
                    if (c >= 0x80) { ascii = false; break; }
                    h = (h ^ c) * 16777619;
                }
                if (ascii)
                {
                    int slot = (int)((h ^ (h >> 16)) & (CacheSlots - 1));
                    string cached = _strCache[slot];
                    if (cached != null && cached.Length == n)
                    {
                        bool same = true;
                        for (int i = 0; i < n; i++)
                        {
                            if (cached[i] != d[p + i]) { same = false; break; }
                        }
                        if (same)
                        {
                            p += n;
                            return cached;
                        }
                    }
                    var chars = new char[n];
                    for (int i = 0; i < n; i++) chars[i] = (char)d[p + i];
                    string s = new string(chars);
                    _strCache[slot] = s;
                    p += n;
                    return s;
                }
            }
            string r;
            try
            {
                r = StrictUtf8.GetString(d, p, n);
            }
            catch (ArgumentException)
            {
                throw new MsgPackException("invalid UTF-8 in a str");
            }
            p += n;
            return r;
        }

        private static int Get16(byte[] d, int p)
        {
            return (d[p] << 8) | d[p + 1];
        }

        private static uint Get32(byte[] d, int p)
        {
            return ((uint)d[p] << 24) | ((uint)d[p + 1] << 16) | ((uint)d[p + 2] << 8) | d[p + 3];
        }

        private static ulong Get64(byte[] d, int p)
        {
            return ((ulong)Get32(d, p) << 32) | Get32(d, p + 4);
        }
    }

    /// <summary>One decision of `act`/`act_batch`, parsed from its reply map.</summary>
    public struct Decision
    {
        /// <summary>The decision's id ("decision": increasing per server).</summary>
        public long DecisionId;
        /// <summary>The chosen action id.</summary>
        public int Action;
        public string ActionName;
        /// <summary>Log-probability of the chosen action under the policy used.</summary>
        public float Logp;
        /// <summary>The critic's value estimate of the observation.</summary>
        public float Value;
        public float Entropy;
        /// <summary>Version of the player's adapter used; 0 = the base policy.</summary>
        public long AdapterVersion;

        /// <summary>Reads a decision map; false when `value` is not one.</summary>
        public static bool TryParse(object value, out Decision decision)
        {
            decision = default(Decision);
            object id, action, name, logp, val, entropy, version;
            var m = value as Dictionary<string, object>;
            if (m != null)
            {
                if (!m.TryGetValue("decision", out id) || !m.TryGetValue("action", out action)) return false;
                m.TryGetValue("action_name", out name);
                m.TryGetValue("logp", out logp);
                m.TryGetValue("value", out val);
                m.TryGetValue("entropy", out entropy);
                m.TryGetValue("adapter_version", out version);
            }
            else
            {
                var g = value as IDictionary;
                if (g == null) return false;
                id = g["decision"];
                action = g["action"];
                name = g["action_name"];
                logp = g["logp"];
                val = g["value"];
                entropy = g["entropy"];
                version = g["adapter_version"];
            }
            long idv, actv, ver;
            if (!Values.TryToLong(id, out idv) || !Values.TryToLong(action, out actv)) return false;
            decision.DecisionId = idv;
            decision.Action = (int)actv;
            decision.ActionName = name as string;
            decision.Logp = (float)Values.ToDouble(logp);
            decision.Value = (float)Values.ToDouble(val);
            decision.Entropy = (float)Values.ToDouble(entropy);
            decision.AdapterVersion = Values.TryToLong(version, out ver) ? ver : 0;
            return true;
        }

        public override string ToString()
        {
            return string.Format(CultureInfo.InvariantCulture,
                "Decision({0}: action {1} {2}, logp {3}, value {4}, entropy {5}, adapter v{6})",
                DecisionId, Action, ActionName, Logp, Value, Entropy, AdapterVersion);
        }
    }

    /// <summary>Conversions of decoded values (any codec's number types).</summary>
    public static class Values
    {
        public static bool TryToLong(object o, out long v)
        {
            if (o is long) { v = (long)o; return true; }
            if (o is int) { v = (int)o; return true; }
            if (o is uint) { v = (uint)o; return true; }
            if (o is byte) { v = (byte)o; return true; }
            if (o is ushort) { v = (ushort)o; return true; }
            if (o is short) { v = (short)o; return true; }
            if (o is sbyte) { v = (sbyte)o; return true; }
            if (o is ulong && (ulong)o <= long.MaxValue) { v = (long)(ulong)o; return true; }
            v = 0;
            return false;
        }

        /// <summary>Any number as a double (NaN for a non-number).</summary>
        public static double ToDouble(object o)
        {
            if (o is float) return (float)o;
            if (o is double) return (double)o;
            long l;
            if (TryToLong(o, out l)) return l;
            if (o is ulong) return (ulong)o;
            return double.NaN;
        }
    }

    /// <summary>The outcome of one request.</summary>
    public sealed class Reply
    {
        /// <summary>The request id the call returned.</summary>
        public int Id;
        /// <summary>The method called (null when unknown).</summary>
        public string Method;
        public bool Ok;
        /// <summary>The decoded result (null on errors, and for nil results).</summary>
        public object Value;
        /// <summary>The server's error code (1-6), or -1 for the client's own errors; 0 when Ok.</summary>
        public int ErrorCode;
        public string ErrorMessage;

        /// <summary>True only for OVERLOADED (code 6): the server did nothing, retry later.</summary>
        public bool Retryable
        {
            get { return ErrorCode == ErrorCodes.Overloaded; }
        }

        public static Reply Success(int id, string method, object value)
        {
            return new Reply { Id = id, Method = method, Ok = true, Value = value };
        }

        public static Reply Failure(int id, string method, int code, string message)
        {
            return new Reply { Id = id, Method = method, Ok = false, ErrorCode = code, ErrorMessage = message };
        }

        /// <summary>The decision of an `act` reply.</summary>
        public bool TryGetDecision(out Decision decision)
        {
            if (!Ok)
            {
                decision = default(Decision);
                return false;
            }
            return Decision.TryParse(Value, out decision);
        }

        /// <summary>The decisions of an `act_batch` reply, in row order.</summary>
        public bool TryGetDecisions(out Decision[] decisions)
        {
            decisions = null;
            var list = Ok ? Value as IList : null;
            if (list == null) return false;
            var result = new Decision[list.Count];
            for (int i = 0; i < result.Length; i++)
            {
                if (!Decision.TryParse(list[i], out result[i])) return false;
            }
            decisions = result;
            return true;
        }

        public override string ToString()
        {
            if (Ok) return "Reply(" + Id + " " + Method + ": ok)";
            return "Reply(" + Id + " " + Method + ": error " + ErrorCode + " " + ErrorMessage + ")";
        }
    }

    /// <summary>One row of ActBatch.</summary>
    public struct ActRow
    {
        public string Player;
        public string Npc;
        public float[] Obs;
        /// <summary>Allowed actions (true = allowed), or null for all.</summary>
        public bool[] Mask;
        public bool Greedy;
        /// <summary>How to send this row's Obs; null = the client's ObsEncoding.</summary>
        public ObsEncoding? Encoding;

        public ActRow(string player, string npc, float[] obs, bool[] mask = null, bool greedy = false)
        {
            Player = player;
            Npc = npc;
            Obs = obs;
            Mask = mask;
            Greedy = greedy;
            Encoding = null;
        }
    }

    /// <summary>
    /// Non-blocking client for the npcadapt bridge. Calls send at once and return a request
    /// id (&gt; 0); call Poll() every frame, then TryTake(id, ...) or use the per-call
    /// callback (invoked from Poll on the caller's thread).
    /// </summary>
    public sealed class NpcAdaptClient : IDisposable
    {
        private sealed class Pending
        {
            public int Id;
            public string Method;
            public Action<Reply> Callback;
            public long Deadline; // Stopwatch ticks; 0 = none
            public bool Internal; // the automatic auth of a new connection
            public string AuthToken; // an explicit Auth(): kept for reconnects once accepted
        }

        private struct Completion
        {
            public Action<Reply> Callback;
            public Reply Reply;
        }

        private const int MaxBufferedReply = 64 << 20;

        private readonly string _host;
        private readonly int _port;
        private readonly IMsgPackCodec _codec;
        private string _token;

        private Socket _socket;
        private IAsyncResult _connectAr;
        private IAsyncResult _dnsAr;
        private IPAddress _address; // resolved once
        private ConnectionState _state = ConnectionState.Disconnected;
        private long _connectDeadline;
        private long _nextAttempt;
        private double _backoff;

        private readonly ByteBuffer _out = new ByteBuffer(4096);
        private readonly ByteBuffer _in = new ByteBuffer(65536);
        private readonly ByteBuffer _tmp = new ByteBuffer(256);
        private bool _holding; // send nothing past _holdLimit until the auth _holdId is answered
        private int _holdLimit;
        private int _holdId;

        private readonly Dictionary<int, Pending> _pending = new Dictionary<int, Pending>();
        private readonly Dictionary<int, Reply> _results = new Dictionary<int, Reply>();
        private readonly Queue<Completion> _callbacks = new Queue<Completion>();
        private readonly Stack<Pending> _pool = new Stack<Pending>();
        private readonly List<Pending> _scratchList = new List<Pending>();
        private int _nextId;
        private bool _inPoll;
        private long _nextTimeoutCheck;

        // Reused for act: the args array and the obs bytes (encoding is synchronous).
        private readonly object[] _args4 = new object[4];
        private readonly object[] _args5 = new object[5];
        private byte[] _obsBytes = new byte[0];

        /// <summary>
        /// Creates the client and starts connecting (without blocking). With a token, every
        /// connection first sends auth(token) and holds the other requests until it is answered.
        /// </summary>
        public NpcAdaptClient(string host, int port, string token = null, IMsgPackCodec codec = null)
        {
            if (host == null) throw new ArgumentNullException("host");
            if (port <= 0 || port > 65535) throw new ArgumentOutOfRangeException("port");
            _host = host;
            _port = port;
            _token = token;
            _codec = codec ?? new MsgPackCodec();
            RequestTimeoutSeconds = 10.0;
            ConnectTimeoutSeconds = 5.0;
            MinReconnectDelaySeconds = 0.05;
            MaxReconnectDelaySeconds = 1.0;
            _backoff = MinReconnectDelaySeconds;
            ObsEncoding = ObsEncoding.Float32Bin;
            Pump();
        }

        public string Host { get { return _host; } }
        public int Port { get { return _port; } }
        public IMsgPackCodec Codec { get { return _codec; } }

        /// <summary>How observations are sent (default: float32 little-endian bin).</summary>
        public ObsEncoding ObsEncoding { get; set; }

        /// <summary>A request not answered within this many seconds fails with code -1 (0 = wait forever).</summary>
        public double RequestTimeoutSeconds { get; set; }

        public double ConnectTimeoutSeconds { get; set; }

        /// <summary>The first wait before reconnecting; it doubles per failure up to MaxReconnectDelaySeconds.</summary>
        public double MinReconnectDelaySeconds { get; set; }

        public double MaxReconnectDelaySeconds { get; set; }

        /// <summary>Gets the exceptions thrown by callbacks (Poll never throws); null writes them to Console.Error.</summary>
        public Action<Exception> OnCallbackException { get; set; }

        public ConnectionState State { get { return _state; } }

        public bool IsConnected { get { return _state == ConnectionState.Connected; } }

        /// <summary>Why the last connection failed or was lost (null if none did).</summary>
        public string LastConnectionError { get; private set; }

        /// <summary>Requests sent and not yet answered.</summary>
        public int PendingCount { get { return _pending.Count; } }

        // ---------------------------------------------------------------- the bridge's methods

        /// <summary>One decision for `player`'s NPC `npc` (archetype: e.g. "duelist"); the reply's value is the decision map.</summary>
        public int Act(string archetype, string player, string npc, float[] obs, bool[] mask = null, bool greedy = false,
            Action<Reply> onReply = null)
        {
            return Submit("act", null, onReply, false, archetype, player, npc, obs, mask, greedy);
        }

        /// <summary>Many decisions in one request; the value is the array of decision maps in row order.</summary>
        public int ActBatch(string archetype, IList<ActRow> rows, Action<Reply> onReply = null)
        {
            var encodedRows = new object[rows.Count];
            for (int i = 0; i < encodedRows.Length; i++)
            {
                ActRow r = rows[i];
                object options = Options(r.Mask, r.Greedy);
                object obs = ObsValue(r.Obs, r.Encoding ?? ObsEncoding, true);
                encodedRows[i] = options == null
                    ? new object[] { r.Player, r.Npc, obs }
                    : new object[] { r.Player, r.Npc, obs, options };
            }
            return Call("act_batch", new object[] { archetype, encodedRows }, onReply);
        }

        /// <summary>Reward for `npc`'s latest decision; done ends the episode. Sent as a notification: no reply.</summary>
        public void Feedback(string player, string npc, double reward, bool done = false)
        {
            Notify("feedback", new object[] { player, npc, reward, done });
        }

        /// <summary>Feedback sent as a request (its value is true): to know it was applied.</summary>
        public int FeedbackRequest(string player, string npc, double reward, bool done = false, Action<Reply> onReply = null)
        {
            return Call("feedback", new object[] { player, npc, reward, done }, onReply);
        }

        /// <summary>The probability of every action for one observation; the value is [[p0, p1, ...]].</summary>
        public int ActionProbs(string archetype, string player, float[] obs, bool useBase = false, Action<Reply> onReply = null)
        {
            var rows = new object[] { new object[] { player, ObsValue(obs, ObsEncoding, true) } };
            return ActionProbsRows(archetype, rows, useBase, onReply);
        }

        /// <summary>Probabilities for many (player, obs) rows: one array per row.</summary>
        public int ActionProbs(string archetype, IList<string> players, IList<float[]> obs, bool useBase = false,
            Action<Reply> onReply = null)
        {
            if (players.Count != obs.Count) throw new ArgumentException("players and obs differ in length");
            var rows = new object[players.Count];
            for (int i = 0; i < rows.Length; i++) rows[i] = new object[] { players[i], ObsValue(obs[i], ObsEncoding, true) };
            return ActionProbsRows(archetype, rows, useBase, onReply);
        }

        private int ActionProbsRows(string archetype, object[] rows, bool useBase, Action<Reply> onReply)
        {
            object[] args = useBase
                ? new object[] { archetype, rows, new Dictionary<string, object> { { "base", true } } }
                : new object[] { archetype, rows };
            return Call("action_probs", args, onReply);
        }

        /// <summary>The player's adapter map, or null (value) when they have none.</summary>
        public int AdapterInfo(string archetype, string player, Action<Reply> onReply = null)
        {
            return Call("adapter_info", new object[] { archetype, player }, onReply);
        }

        public int PriorInfo(string archetype, string player, Action<Reply> onReply = null)
        {
            return Call("prior_info", new object[] { archetype, player }, onReply);
        }

        public int ResetPlayer(string archetype, string player, Action<Reply> onReply = null)
        {
            return Call("reset_player", new object[] { archetype, player }, onReply);
        }

        public int Archetypes(Action<Reply> onReply = null)
        {
            return Call("archetypes", null, onReply);
        }

        /// <summary>Makes everything so far durable on the server; the value is the number of adapters written.</summary>
        public int Flush(Action<Reply> onReply = null)
        {
            return Call("flush", null, onReply);
        }

        public int Stats(Action<Reply> onReply = null)
        {
            return Call("stats", null, onReply);
        }

        /// <summary>
        /// Authenticates this connection (value: true). Once the server accepts it, the token is
        /// kept and sent first on every later connection; requests made after this one wait
        /// until it is answered.
        /// </summary>
        public int Auth(string token, Action<Reply> onReply = null)
        {
            int id = Submit("auth", new object[] { token }, onReply, true, null, null, null, null, null, false);
            Pending p;
            if (_pending.TryGetValue(id, out p)) p.AuthToken = token;
            return id;
        }

        /// <summary>Any method with positional params.</summary>
        public int Call(string method, object[] args, Action<Reply> onReply = null)
        {
            return Submit(method, args ?? _emptyArgs, onReply, false, null, null, null, null, null, false);
        }

        /// <summary>A notification: never answered; lost if the connection drops before it is sent.</summary>
        public void Notify(string method, object[] args)
        {
            if (_state == ConnectionState.Closed) return;
            int mark = _out.Length;
            try
            {
                _codec.EncodeNotification(_out, method, args ?? _emptyArgs);
            }
            catch
            {
                _out.Length = mark;
                throw;
            }
            Pump();
        }

        private static readonly object[] _emptyArgs = new object[0];

        // ---------------------------------------------------------------- results

        /// <summary>
        /// Reads what has arrived, without blocking, and completes requests: stores their
        /// replies for TryTake and invokes callbacks. Also connects, reconnects and times out
        /// requests. Call it every frame. Never throws.
        /// </summary>
        public void Poll()
        {
            if (_inPoll) return;
            _inPoll = true;
            try
            {
                try
                {
                    Pump();
                    if (_state == ConnectionState.Connected) Receive();
                    if (_state == ConnectionState.Connected) SendOut();
                    CheckTimeouts();
                }
                catch (Exception e)
                {
                    Drop("connection lost: client error: " + e.Message);
                }
                RunCallbacks();
            }
            catch (Exception e)
            {
                Report(e);
            }
            finally
            {
                _inPoll = false;
            }
        }

        /// <summary>Takes the reply of a request sent without a callback, once Poll has completed it.</summary>
        public bool TryTake(int id, out Reply reply)
        {
            if (_results.TryGetValue(id, out reply))
            {
                _results.Remove(id);
                return true;
            }
            return false;
        }

        /// <summary>Whether the request is still waiting for its reply.</summary>
        public bool IsPending(int id)
        {
            return _pending.ContainsKey(id);
        }

        /// <summary>
        /// Blocks up to `microseconds` until bytes arrive (or the connection changes state). For
        /// tools, tests and servers; a game never blocks: it calls Poll() once per frame.
        /// </summary>
        public void WaitForData(int microseconds)
        {
            try
            {
                int sendable = _holding ? _holdLimit : _out.Length;
                if (_state == ConnectionState.Connected && sendable == 0)
                {
                    _socket.Poll(microseconds, SelectMode.SelectRead);
                    return;
                }
                if (_state == ConnectionState.Connecting && _connectAr != null)
                {
                    _connectAr.AsyncWaitHandle.WaitOne(Math.Max(1, microseconds / 1000));
                    return;
                }
            }
            catch (Exception)
            {
                // the next Poll sees what happened
            }
            System.Threading.Thread.Sleep(Math.Max(1, microseconds / 1000));
        }


        /// <summary>Closes the connection; pending requests fail with code -1 and later calls fail at once.</summary>
        public void Close()
        {
            if (_state == ConnectionState.Closed) return;
            Drop("client closed");
            _state = ConnectionState.Closed;
        }

        public void Dispose()
        {
            Close();
        }

        // ---------------------------------------------------------------- encoding

        /// <summary>
        /// Appends the `act` request exactly as Act sends it (without sending): for benchmarks
        /// and tools.
        /// </summary>
        public void EncodeActRequest(ByteBuffer output, uint msgid, string archetype, string player, string npc,
            float[] obs, bool[] mask = null, bool greedy = false)
        {
            object options = Options(mask, greedy);
            object[] args = options == null ? _args4 : _args5;
            args[0] = archetype;
            args[1] = player;
            args[2] = npc;
            args[3] = ObsValue(obs, ObsEncoding, false);
            if (options != null) args[4] = options;
            try
            {
                _codec.EncodeRequest(output, msgid, "act", args);
            }
            finally
            {
                args[0] = args[1] = args[2] = args[3] = null;
                if (options != null) args[4] = null;
            }
        }

        /// <summary>
        /// Reads a decoded response [1, msgid, error, result] into a Reply (Id = msgid); false
        /// for anything else.
        /// </summary>
        public static bool TryParseResponse(object message, out uint msgid, out Reply reply)
        {
            msgid = 0;
            reply = null;
            var a = message as IList;
            if (a == null || a.Count != 4) return false;
            long type, id;
            if (!Values.TryToLong(a[0], out type) || type != 1) return false;
            if (!Values.TryToLong(a[1], out id) || id < 0 || id > uint.MaxValue) return false;
            msgid = (uint)id;
            object error = a[2];
            if (error == null)
            {
                reply = Reply.Success((int)msgid, null, a[3]);
                return true;
            }
            var e = error as IList;
            long code;
            if (e != null && e.Count >= 2 && Values.TryToLong(e[0], out code))
            {
                object m = e[1];
                string text = m as string;
                if (text == null)
                {
                    var mb = m as byte[];
                    text = mb != null ? Encoding.UTF8.GetString(mb) : Convert.ToString(m, CultureInfo.InvariantCulture);
                }
                reply = Reply.Failure((int)msgid, null, (int)code, text);
            }
            else
            {
                reply = Reply.Failure((int)msgid, null, 0, Convert.ToString(error, CultureInfo.InvariantCulture));
            }
            return true;
        }

        private static object Options(bool[] mask, bool greedy)
        {
            if (mask == null && !greedy) return null;
            var options = new Dictionary<string, object>(2);
            if (mask != null) options["mask"] = mask;
            if (greedy) options["greedy"] = true;
            return options;
        }

        /// <summary>obs as a float32 LE byte[] or a double[]; `fresh`: a new array (else the reused one).</summary>
        private object ObsValue(float[] obs, ObsEncoding encoding, bool fresh)
        {
            if (obs == null) return null;
            if (encoding == ObsEncoding.List)
            {
                var list = new double[obs.Length];
                for (int i = 0; i < obs.Length; i++) list[i] = obs[i];
                return list;
            }
            byte[] bytes;
            if (fresh) bytes = new byte[obs.Length * 4];
            else
            {
                if (_obsBytes.Length != obs.Length * 4) _obsBytes = new byte[obs.Length * 4];
                bytes = _obsBytes;
            }
            FloatBits bits = default(FloatBits);
            for (int i = 0, p = 0; i < obs.Length; i++, p += 4)
            {
                bits.F32 = obs[i];
                uint u = bits.U32;
                bytes[p] = (byte)u;
                bytes[p + 1] = (byte)(u >> 8);
                bytes[p + 2] = (byte)(u >> 16);
                bytes[p + 3] = (byte)(u >> 24);
            }
            return bytes;
        }

        // ---------------------------------------------------------------- requests

        private int NextId()
        {
            while (true)
            {
                _nextId = _nextId >= int.MaxValue ? 1 : _nextId + 1;
                if (!_pending.ContainsKey(_nextId) && !_results.ContainsKey(_nextId)) return _nextId;
            }
        }

        private int Submit(string method, object[] args, Action<Reply> onReply, bool isAuth,
            string archetype, string player, string npc, float[] obs, bool[] mask, bool greedy)
        {
            int id = NextId();
            if (_state == ConnectionState.Closed)
            {
                Deliver(NewPending(id, method, onReply, false), Reply.Failure(id, method, ErrorCodes.ClientError, "client is closed"));
                return id;
            }
            if (_state == ConnectionState.Disconnected) Pump(); // connect first: a new connection's auth goes first
            int mark = _out.Length;
            try
            {
                if (args == null) EncodeActRequest(_out, (uint)id, archetype, player, npc, obs, mask, greedy);
                else _codec.EncodeRequest(_out, (uint)id, method, args);
            }
            catch
            {
                _out.Length = mark;
                throw;
            }
            _pending[id] = NewPending(id, method, onReply, false);
            if (isAuth)
            {
                _holding = true;
                _holdLimit = _out.Length;
                _holdId = id;
            }
            Pump();
            return id;
        }

        private Pending NewPending(int id, string method, Action<Reply> callback, bool isInternal)
        {
            Pending p = _pool.Count > 0 ? _pool.Pop() : new Pending();
            p.Id = id;
            p.Method = method;
            p.Callback = callback;
            p.Internal = isInternal;
            p.AuthToken = null;
            p.Deadline = RequestTimeoutSeconds > 0 ? Now() + Ticks(RequestTimeoutSeconds) : 0;
            return p;
        }

        private void Deliver(Pending p, Reply reply)
        {
            reply.Id = p.Id;
            reply.Method = p.Method;
            if (_holding && p.Id == _holdId) _holding = false;
            if (p.AuthToken != null && reply.Ok) _token = p.AuthToken;
            p.AuthToken = null;
            if (!p.Internal)
            {
                if (p.Callback != null) _callbacks.Enqueue(new Completion { Callback = p.Callback, Reply = reply });
                else _results[p.Id] = reply;
            }
            else if (!reply.Ok && reply.ErrorCode > 0)
            {
                LastConnectionError = "auth failed: [" + reply.ErrorCode + "] " + reply.ErrorMessage;
            }
            p.Callback = null;
            p.Method = null;
            _pool.Push(p);
        }

        private void RunCallbacks()
        {
            int n = _callbacks.Count; // those queued now: callbacks that queue more run next Poll
            for (int i = 0; i < n && _callbacks.Count > 0; i++)
            {
                Completion c = _callbacks.Dequeue();
                try
                {
                    c.Callback(c.Reply);
                }
                catch (Exception e)
                {
                    Report(e);
                }
            }
        }

        private void Report(Exception e)
        {
            try
            {
                if (OnCallbackException != null) OnCallbackException(e);
                else Console.Error.WriteLine("NpcAdaptClient: callback threw " + e);
            }
            catch (Exception)
            {
                // nothing more to do
            }
        }

        private void CheckTimeouts()
        {
            long now = Now();
            if (now < _nextTimeoutCheck || _pending.Count == 0) return;
            _nextTimeoutCheck = now + Ticks(0.05);
            _scratchList.Clear();
            foreach (Pending p in _pending.Values)
            {
                if (p.Deadline != 0 && now >= p.Deadline) _scratchList.Add(p);
            }
            foreach (Pending p in _scratchList)
            {
                _pending.Remove(p.Id);
                string message = string.Format(CultureInfo.InvariantCulture, "{0} timed out after {1} s", p.Method, RequestTimeoutSeconds);
                Deliver(p, Reply.Failure(p.Id, p.Method, ErrorCodes.ClientError, message));
            }
            _scratchList.Clear();
        }

        // ---------------------------------------------------------------- the connection

        private static long Now()
        {
            return Stopwatch.GetTimestamp();
        }

        private static long Ticks(double seconds)
        {
            return (long)(seconds * Stopwatch.Frequency);
        }

        /// <summary>Connects when due, finishes a connect in progress, sends what is waiting. Never throws.</summary>
        private void Pump()
        {
            try
            {
                if (_state == ConnectionState.Disconnected && Now() >= _nextAttempt) StartConnect();
                if (_state == ConnectionState.Connecting) AdvanceConnect();
                if (_state == ConnectionState.Connected) SendOut();
            }
            catch (Exception e)
            {
                Drop("connection lost: client error: " + e.Message);
            }
        }

        private void StartConnect()
        {
            _state = ConnectionState.Connecting;
            _connectDeadline = Now() + Ticks(ConnectTimeoutSeconds);
            if (_token != null)
            {
                // auth first on every connection; the rest waits for its answer
                int id = NextId();
                _tmp.Clear();
                _codec.EncodeRequest(_tmp, (uint)id, "auth", new object[] { _token });
                int authLength = _tmp.Length;
                _tmp.Append(_out.Data, 0, _out.Length);
                _out.Clear();
                _out.Append(_tmp.Data, 0, _tmp.Length);
                _tmp.Clear();
                _tmp.ShrinkIfEmpty(256);
                _pending[id] = NewPending(id, "auth", null, true);
                if (_holding)
                {
                    _holdLimit += authLength;
                }
                else
                {
                    _holding = true;
                    _holdLimit = authLength;
                    _holdId = id;
                }
            }
            IPAddress ip = _address;
            if (ip == null && IPAddress.TryParse(_host, out ip)) _address = ip;
            if (ip != null)
            {
                BeginSocketConnect(ip);
            }
            else
            {
                try
                {
                    _dnsAr = Dns.BeginGetHostAddresses(_host, null, null);
                }
                catch (Exception e)
                {
                    ConnectFailed("cannot resolve " + _host + ": " + e.Message);
                }
            }
        }

        private void BeginSocketConnect(IPAddress ip)
        {
            try
            {
                _socket = new Socket(ip.AddressFamily, SocketType.Stream, ProtocolType.Tcp);
                _connectAr = _socket.BeginConnect(new IPEndPoint(ip, _port), null, null);
            }
            catch (SocketException e)
            {
                ConnectFailed(e.SocketErrorCode.ToString());
            }
            catch (Exception e)
            {
                ConnectFailed(e.Message);
            }
        }

        private void AdvanceConnect()
        {
            if (_dnsAr != null)
            {
                if (!_dnsAr.IsCompleted)
                {
                    if (Now() >= _connectDeadline) ConnectFailed("cannot resolve " + _host + ": timed out");
                    return;
                }
                IAsyncResult ar = _dnsAr;
                _dnsAr = null;
                IPAddress[] addresses;
                try
                {
                    addresses = Dns.EndGetHostAddresses(ar);
                }
                catch (Exception e)
                {
                    ConnectFailed("cannot resolve " + _host + ": " + e.Message);
                    return;
                }
                IPAddress pick = null;
                foreach (IPAddress a in addresses)
                {
                    if (a.AddressFamily == AddressFamily.InterNetwork) { pick = a; break; }
                    if (pick == null) pick = a;
                }
                if (pick == null)
                {
                    ConnectFailed("cannot resolve " + _host + ": no address");
                    return;
                }
                _address = pick;
                BeginSocketConnect(pick);
                if (_state != ConnectionState.Connecting) return;
            }
            if (_connectAr == null) return;
            if (!_connectAr.IsCompleted)
            {
                if (Now() >= _connectDeadline) ConnectFailed("timed out");
                return;
            }
            IAsyncResult done = _connectAr;
            _connectAr = null;
            try
            {
                _socket.EndConnect(done);
                _socket.Blocking = false;
                _socket.NoDelay = true;
            }
            catch (SocketException e)
            {
                ConnectFailed(e.SocketErrorCode.ToString());
                return;
            }
            catch (Exception e)
            {
                ConnectFailed(e.Message);
                return;
            }
            _state = ConnectionState.Connected; // the backoff is reset by the first reply, not here:
            // a server that accepts and closes at once (at its connection limit) is not hammered
        }

        private void ConnectFailed(string why)
        {
            Drop("cannot connect to " + _host + ":" + _port + ": " + why);
        }

        private void SendOut()
        {
            int limit = _holding ? _holdLimit : _out.Length;
            int sent = 0;
            while (sent < limit)
            {
                SocketError error;
                int n = _socket.Send(_out.Data, sent, limit - sent, SocketFlags.None, out error);
                if (error == SocketError.WouldBlock || error == SocketError.TryAgain) break;
                if (error != SocketError.Success)
                {
                    Drop("connection lost: " + error);
                    return;
                }
                if (n <= 0) break;
                sent += n;
            }
            if (sent > 0)
            {
                _out.Consume(sent);
                if (_holding) _holdLimit -= sent;
                _out.ShrinkIfEmpty(4096);
            }
        }

        private void Receive()
        {
            while (true)
            {
                if (_in.Data.Length - _in.Length < 16384)
                {
                    if (_in.Length >= MaxBufferedReply)
                    {
                        Drop("connection lost: a reply larger than " + (MaxBufferedReply >> 20) + " MiB");
                        return;
                    }
                    _in.Ensure(16384);
                }
                int free = _in.Data.Length - _in.Length;
                SocketError error;
                int n = _socket.Receive(_in.Data, _in.Length, free, SocketFlags.None, out error);
                if (error == SocketError.WouldBlock || error == SocketError.TryAgain) break;
                if (error != SocketError.Success)
                {
                    Drop("connection lost: " + error);
                    return;
                }
                if (n == 0)
                {
                    Drop("connection lost: the server closed the connection");
                    return;
                }
                _in.Length += n;
                if (n < free) break; // drained for now: spare the syscall that would say so
            }
            int offset = 0;
            while (offset < _in.Length)
            {
                object message;
                int used;
                try
                {
                    used = _codec.TryDecode(_in.Data, offset, _in.Length - offset, out message);
                }
                catch (Exception e)
                {
                    Drop("connection lost: bad bytes from the server: " + e.Message);
                    return;
                }
                if (used <= 0) break;
                offset += used;
                HandleMessage(message);
            }
            _in.Consume(offset);
            _in.ShrinkIfEmpty(65536);
        }

        private void HandleMessage(object message)
        {
            uint msgid;
            Reply reply;
            if (!TryParseResponse(message, out msgid, out reply)) return; // the bridge sends nothing else
            _backoff = MinReconnectDelaySeconds; // the connection works
            if (msgid > int.MaxValue) return;
            Pending p;
            if (!_pending.TryGetValue((int)msgid, out p)) return; // timed out earlier
            _pending.Remove((int)msgid);
            Deliver(p, reply);
        }

        /// <summary>Closes the connection, fails every pending request with code -1 and schedules a reconnect.</summary>
        private void Drop(string reason)
        {
            if (_state == ConnectionState.Closed) return;
            if (_socket != null)
            {
                try { _socket.Close(); } catch (Exception) { }
                _socket = null;
            }
            _connectAr = null;
            _dnsAr = null;
            _state = ConnectionState.Disconnected;
            _out.Clear();
            _in.Clear();
            _out.ShrinkIfEmpty(4096);
            _in.ShrinkIfEmpty(65536);
            _holding = false;
            LastConnectionError = reason;
            _nextAttempt = Now() + Ticks(_backoff);
            _backoff = Math.Min(Math.Max(_backoff, MinReconnectDelaySeconds) * 2, MaxReconnectDelaySeconds);
            if (_pending.Count == 0) return;
            _scratchList.Clear();
            _scratchList.AddRange(_pending.Values);
            _pending.Clear();
            foreach (Pending p in _scratchList)
            {
                Deliver(p, Reply.Failure(p.Id, p.Method, ErrorCodes.ClientError, reason));
            }
            _scratchList.Clear();
        }
    }
}
