// Conformance driver for the C# client (clients/CONFORMANCE.md): `Driver HOST PORT`, one
// command per stdin line, one JSON line per answer on stdout. It uses only the client's
// public API, polling it the way a game loop would (with a short wait between polls).
//
//   mcs -optimize+ -r:System.Numerics -out:/tmp/cs-driver.exe clients/csharp/NpcAdaptClient.cs clients/csharp/conformance/Driver.cs
//   mono /tmp/cs-driver.exe 127.0.0.1 7777
#if !UNITY_5_3_OR_NEWER
using System;
using System.Collections;
using System.Collections.Generic;
using System.Diagnostics;
using System.Globalization;
using System.IO;
using System.Numerics;
using System.Text;
using System.Threading;

namespace NpcAdapt.Conformance
{
    internal sealed class DriverError : Exception
    {
        public DriverError(string message) : base(message) { }
    }

    internal static class Driver
    {
        private const double WaitSeconds = 10.0;
        private static readonly CultureInfo Inv = CultureInfo.InvariantCulture;
        private static NpcAdaptClient _client;

        private static int Main(string[] args)
        {
            if (args.Length != 2)
            {
                Console.Error.WriteLine("usage: Driver HOST PORT");
                return 2;
            }
            int port;
            if (!int.TryParse(args[1], NumberStyles.None, Inv, out port) || port <= 0 || port > 65535)
            {
                Console.Error.WriteLine("bad port " + args[1]);
                return 2;
            }
            var stdout = new StreamWriter(Console.OpenStandardOutput(), new UTF8Encoding(false));
            stdout.NewLine = "\n";
            _client = new NpcAdaptClient(args[0], port);
            _client.RequestTimeoutSeconds = WaitSeconds;
            var stdin = new StreamReader(Console.OpenStandardInput(), new UTF8Encoding(false));
            string line;
            while ((line = stdin.ReadLine()) != null)
            {
                line = line.TrimEnd('\r');
                string answer;
                bool quit = line == "quit";
                try
                {
                    answer = quit ? Ok(true) : Run(line.Split(' '));
                }
                catch (Exception e)
                {
                    answer = Error(-1, e is DriverError ? e.Message : e.GetType().Name + ": " + e.Message, false);
                }
                stdout.WriteLine(answer);
                stdout.Flush();
                if (quit) break;
            }
            _client.Close();
            return 0;
        }

        private static string Run(string[] t)
        {
            NpcAdaptClient c = _client;
            switch (t[0])
            {
                case "auth":
                    Need(t, 2, 2);
                    return Answer(Wait(c.Auth(t[1])));
                case "archetypes":
                    Need(t, 1, 1);
                    return Answer(Wait(c.Archetypes()));
                case "act":
                    {
                        Need(t, 5, 7);
                        float[] obs = Obs(t[4]);
                        bool[] mask = null;
                        bool greedy = false;
                        for (int i = 5; i < t.Length; i++)
                        {
                            if (t[i] == "greedy") greedy = true;
                            else if (t[i].StartsWith("mask:", StringComparison.Ordinal)) mask = Mask(t[i]);
                            else throw new DriverError("bad act option " + t[i]);
                        }
                        return Answer(Wait(c.Act(t[1], t[2], t[3], obs, mask, greedy)));
                    }
                case "act_batch":
                    {
                        Need(t, 3, int.MaxValue);
                        var rows = new List<ActRow>();
                        for (int i = 2; i < t.Length; i++)
                        {
                            string[] parts = t[i].Split('|');
                            if (parts.Length != 3 && parts.Length != 4) throw new DriverError("bad row " + t[i]);
                            var row = new ActRow(parts[0], parts[1], ParseNumbers(parts[2]));
                            row.Encoding = ObsForm(parts[2]);
                            if (parts.Length == 4) row.Mask = Mask(parts[3]);
                            rows.Add(row);
                        }
                        return Answer(Wait(c.ActBatch(t[1], rows)));
                    }
                case "feedback":
                    Need(t, 5, 5);
                    c.Feedback(t[1], t[2], Num(t[3]), Flag(t[4]));
                    c.Poll();
                    return Ok(null);
                case "feedback_wait":
                    Need(t, 5, 5);
                    return Answer(Wait(c.FeedbackRequest(t[1], t[2], Num(t[3]), Flag(t[4]))));
                case "action_probs":
                    {
                        Need(t, 4, 5);
                        bool useBase = false;
                        if (t.Length == 5)
                        {
                            if (t[4] != "base") throw new DriverError("bad action_probs option " + t[4]);
                            useBase = true;
                        }
                        float[] obs = Obs(t[3]);
                        return Answer(Wait(c.ActionProbs(t[1], t[2], obs, useBase)));
                    }
                case "adapter_info":
                    Need(t, 3, 3);
                    return Answer(Wait(c.AdapterInfo(t[1], t[2])));
                case "flush":
                    Need(t, 1, 1);
                    return Answer(Wait(c.Flush()));
                case "call":
                    Need(t, 2, 2);
                    return Answer(Wait(c.Call(t[1], new object[0])));
                case "pipeline":
                    return Pipeline(t);
                case "act_retry":
                    return ActRetry(t);
                case "encode":
                    Need(t, 3, 3);
                    return Encode(t[1], t[2]);
                case "decode":
                    {
                        Need(t, 2, 2);
                        byte[] bytes = Unhex(t[1]);
                        object value;
                        int used = c.Codec.TryDecode(bytes, 0, bytes.Length, out value);
                        if (used <= 0) throw new DriverError("incomplete MessagePack value");
                        if (used != bytes.Length) throw new DriverError((bytes.Length - used) + " bytes after the value");
                        return Ok(value);
                    }
                case "bench":
                    return Bench(t);
                default:
                    throw new DriverError("unknown command '" + t[0] + "'");
            }
        }

        // ------------------------------------------------------------ waiting like a game loop

        private static Reply Wait(int id)
        {
            var clock = Stopwatch.StartNew();
            while (true)
            {
                _client.Poll();
                Reply r;
                if (_client.TryTake(id, out r)) return r;
                if (clock.Elapsed.TotalSeconds > WaitSeconds)
                {
                    return Reply.Failure(id, null, ErrorCodes.ClientError, "timed out after 10 s");
                }
                _client.WaitForData(1000);
            }
        }

        private static string Pipeline(string[] t)
        {
            Need(t, 7, 7);
            int n = Int(t[1]);
            string mode = t[6];
            if (mode != "act" && mode != "mixed") throw new DriverError("bad pipeline mode " + mode);
            float[] obs = Obs(t[5]);
            var ids = new int[n];
            for (int i = 0; i < n; i++)
            {
                ids[i] = mode == "mixed" && i % 2 == 1
                    ? _client.AdapterInfo(t[2], t[3])
                    : _client.Act(t[2], t[3], t[4], obs);
            }
            var entries = new object[n];
            for (int i = 0; i < n; i++)
            {
                Reply r = Wait(ids[i]);
                var e = new Dictionary<string, object>();
                Decision d;
                if (!r.Ok)
                {
                    e["kind"] = "error";
                    e["code"] = r.ErrorCode;
                    e["retryable"] = r.Retryable;
                }
                else if (r.TryGetDecision(out d))
                {
                    e["kind"] = "decision";
                    e["decision"] = d.DecisionId;
                }
                else if (r.Value == null || (r.Value is IDictionary && ((IDictionary)r.Value).Contains("player")))
                {
                    e["kind"] = "info";
                }
                else
                {
                    e["kind"] = "unexpected";
                    e["value"] = r.Value;
                }
                entries[i] = e;
            }
            return Ok(entries);
        }

        private static string ActRetry(string[] t)
        {
            Need(t, 6, 6);
            int tries = Int(t[1]);
            float[] obs = Obs(t[5]);
            Reply last = null;
            for (int k = 1; k <= tries; k++)
            {
                last = Wait(_client.Act(t[2], t[3], t[4], obs));
                if (last.Ok)
                {
                    var result = new Dictionary<string, object>();
                    result["attempts"] = k;
                    result["decision"] = last.Value;
                    return Ok(result);
                }
                Console.Error.WriteLine("act_retry: attempt " + k + ": [" + last.ErrorCode + "] " + last.ErrorMessage);
                Thread.Sleep(100);
            }
            if (last == null) throw new DriverError("act_retry needs TRIES >= 1");
            return Answer(last);
        }

        private static string Encode(string type, string text)
        {
            object value;
            switch (type)
            {
                case "nil": value = null; break;
                case "bool":
                    if (text != "true" && text != "false") throw new DriverError("bad bool " + text);
                    value = text == "true";
                    break;
                case "int": value = long.Parse(text, NumberStyles.AllowLeadingSign, Inv); break;
                case "float32":
                    {
                        double d = Num(text);
                        float f = (float)d;
                        // Python's msgpack (struct 'f') refuses a finite number beyond float32's range
                        if (float.IsInfinity(f) && !double.IsInfinity(d)) throw new DriverError("float too large to pack as float32: " + text);
                        value = f;
                        break;
                    }
                case "float64": value = Num(text); break;
                case "str": value = new UTF8Encoding(false, true).GetString(Unhex(text)); break;
                case "bin": value = Unhex(text); break;
                case "array_int":
                    {
                        int n = Int(text);
                        var a = new object[n];
                        for (int i = 0; i < n; i++) a[i] = (long)i;
                        value = a;
                        break;
                    }
                case "map_str_int":
                    {
                        int n = Int(text);
                        var m = new Dictionary<string, object>(n);
                        for (int i = 0; i < n; i++) m["k" + i.ToString(Inv)] = (long)i;
                        value = m;
                        break;
                    }
                default: throw new DriverError("unknown encode type " + type);
            }
            var buffer = new ByteBuffer();
            _client.Codec.EncodeValue(buffer, value);
            return Ok(Hex(buffer.Data, 0, buffer.Length));
        }

        // ------------------------------------------------------------ bench

        private const string BenchResponse =
            "940101c087a86465636973696f6ece00000001a46c6f6770cabf69111ca576616c7565ca3e998751a7656e74726f7079ca3f97d5d3" +
            "af616461707465725f76657273696f6ece00000000a6616374696f6e06ab616374696f6e5f6e616d65a56665696e74";

        private static string Bench(string[] t)
        {
            Need(t, 7, 7);
            int seq = Int(t[1]), pipe = Int(t[2]), codecIters = Int(t[3]);
            string arch = t[4], player = t[5], npc = t[6];
            NpcAdaptClient c = _client;
            c.ObsEncoding = ObsEncoding.Float32Bin;
            float[] obs = { 0.5f, 0.25f, 1f, 0f, 0f, 0.75f, 0.5f, 0f };
            double tick = 1e6 / Stopwatch.Frequency;

            // warm up the JIT and the connection
            for (int i = 0; i < 20; i++)
            {
                Reply w = Wait(c.Act(arch, player, npc, obs));
                if (!w.Ok) return Answer(w);
            }

            // sequential round trips
            var lat = new double[seq];
            long start = Stopwatch.GetTimestamp();
            for (int i = 0; i < seq; i++)
            {
                long t0 = Stopwatch.GetTimestamp();
                Reply r = Wait(c.Act(arch, player, npc, obs));
                lat[i] = (Stopwatch.GetTimestamp() - t0) * tick;
                if (!r.Ok) return Answer(r);
            }
            double seqSeconds = (Stopwatch.GetTimestamp() - start) * tick / 1e6;
            Array.Sort(lat);

            // pipelined, up to 64 in flight, completed by callbacks
            int sent = 0, done = 0, inFlight = 0;
            Reply failure = null;
            Action<Reply> onReply = r =>
            {
                done++;
                inFlight--;
                if (!r.Ok && failure == null) failure = r;
            };
            var clock = Stopwatch.StartNew();
            start = Stopwatch.GetTimestamp();
            while (done < pipe && failure == null)
            {
                while (inFlight < 64 && sent < pipe)
                {
                    c.Act(arch, player, npc, obs, null, false, onReply);
                    sent++;
                    inFlight++;
                }
                int before = done;
                c.Poll();
                if (done == before)
                {
                    if (clock.Elapsed.TotalSeconds > 60) throw new DriverError("pipelined bench timed out");
                    c.WaitForData(1000);
                }
            }
            if (failure != null) return Answer(failure);
            double pipeSeconds = (Stopwatch.GetTimestamp() - start) * tick / 1e6;

            // codec: encode one act request + decode one response into a Decision
            byte[] response = Unhex(BenchResponse);
            var output = new ByteBuffer(256);
            IMsgPackCodec codec = c.Codec;
            long checksum = 0;
            for (int i = 0; i < 1000; i++) checksum += CodecOnce(c, codec, output, response, (uint)i, arch, player, npc, obs);
            start = Stopwatch.GetTimestamp();
            for (int i = 0; i < codecIters; i++)
            {
                checksum += CodecOnce(c, codec, output, response, (uint)i, arch, player, npc, obs);
            }
            double codecUs = codecIters > 0 ? (Stopwatch.GetTimestamp() - start) * tick / codecIters : 0;
            if (checksum == 42) Console.Error.WriteLine("");

            var result = new Dictionary<string, object>();
            result["sequential_per_s"] = seq / Math.Max(seqSeconds, 1e-9);
            result["pipelined_per_s"] = pipe / Math.Max(pipeSeconds, 1e-9);
            result["p50_us"] = Percentile(lat, 0.50);
            result["p99_us"] = Percentile(lat, 0.99);
            result["codec_us"] = codecUs;
            return Ok(result);
        }

        private static long CodecOnce(NpcAdaptClient c, IMsgPackCodec codec, ByteBuffer output, byte[] response, uint msgid,
            string arch, string player, string npc, float[] obs)
        {
            output.Clear();
            c.EncodeActRequest(output, msgid, arch, player, npc, obs);
            object message;
            if (codec.TryDecode(response, 0, response.Length, out message) != response.Length) throw new DriverError("bench decode failed");
            uint id;
            Reply reply;
            Decision d;
            if (!NpcAdaptClient.TryParseResponse(message, out id, out reply) || !reply.TryGetDecision(out d))
            {
                throw new DriverError("bench response is not a decision");
            }
            return d.Action + output.Length;
        }

        private static double Percentile(double[] sorted, double q)
        {
            if (sorted.Length == 0) return 0;
            int rank = (int)Math.Ceiling(q * sorted.Length) - 1;
            return sorted[Math.Max(0, Math.Min(sorted.Length - 1, rank))];
        }

        // ------------------------------------------------------------ tokens

        private static void Need(string[] t, int min, int max)
        {
            if (t.Length < min || t.Length > max) throw new DriverError("wrong number of arguments for " + t[0]);
        }

        private static int Int(string s)
        {
            int v;
            if (!int.TryParse(s, NumberStyles.AllowLeadingSign, Inv, out v)) throw new DriverError("bad integer " + s);
            return v;
        }

        private static bool Flag(string s)
        {
            if (s == "1") return true;
            if (s == "0") return false;
            throw new DriverError("bad flag " + s + " (0 or 1)");
        }

        /// <summary>
        /// A decimal as Python's float() reads it: correctly rounded (mono's double.Parse can be
        /// 1 ulp off), with nan, inf and -0.
        /// </summary>
        private static double Num(string s)
        {
            string low = s.ToLowerInvariant();
            bool negative = low.StartsWith("-", StringComparison.Ordinal);
            string body = low.Length > 0 && (low[0] == '-' || low[0] == '+') ? low.Substring(1) : low;
            if (body == "nan") return BitConverter.Int64BitsToDouble(0x7ff8000000000000L);
            if (body == "inf" || body == "infinity") return negative ? double.NegativeInfinity : double.PositiveInfinity;
            double v = ParseExact(body, s);
            return negative ? -v : v;
        }

        /// <summary>Digits[.digits][e[+-]digits], nearest double (ties to even), checked with big integers.</summary>
        private static double ParseExact(string body, string original)
        {
            var digits = new StringBuilder();
            int exp10 = 0, i = 0;
            bool any = false, dot = false;
            for (; i < body.Length; i++)
            {
                char ch = body[i];
                if (ch >= '0' && ch <= '9')
                {
                    any = true;
                    if (digits.Length > 0 || ch != '0') digits.Append(ch);
                    if (dot) exp10--;
                }
                else if (ch == '.' && !dot) dot = true;
                else if (ch == '_') continue;
                else break;
            }
            if (!any) throw new DriverError("bad number " + original);
            if (i < body.Length)
            {
                if (body[i] != 'e' || i + 1 >= body.Length) throw new DriverError("bad number " + original);
                long e;
                if (!long.TryParse(body.Substring(i + 1), NumberStyles.AllowLeadingSign, Inv, out e)) throw new DriverError("bad number " + original);
                e = Math.Max(-100000, Math.Min(100000, e));
                exp10 += (int)e;
            }
            if (digits.Length == 0) return 0.0;
            int magnitude = digits.Length + exp10; // value < 10^magnitude
            if (magnitude > 311) return double.PositiveInfinity;
            if (magnitude < -330) return 0.0;
            BigInteger m10 = BigInteger.Parse(digits.ToString(), Inv);
            double x;
            if (!double.TryParse(digits + "e" + exp10.ToString(Inv), NumberStyles.Float, Inv, out x)) x = double.MaxValue;
            if (double.IsInfinity(x)) x = double.MaxValue;
            for (int guard = 0; guard < 64; guard++)
            {
                long bits = BitConverter.DoubleToInt64Bits(x);
                int be = (int)((bits >> 52) & 0x7ff);
                long frac = bits & 0xfffffffffffffL;
                long m = be == 0 ? frac : frac | (1L << 52);
                int k = be == 0 ? -1074 : be - 1075;
                // upper halfway point (2m+1) * 2^(k-1)
                int up = Compare(m10, exp10, 2 * m + 1, k - 1);
                if (up > 0 || (up == 0 && (m & 1) == 1))
                {
                    if (x == double.MaxValue) return double.PositiveInfinity;
                    x = BitConverter.Int64BitsToDouble(bits + 1);
                    continue;
                }
                if (x == 0) return 0.0;
                // lower halfway point; the gap below a power of two is half as wide
                int down = frac == 0 && be > 1 ? Compare(m10, exp10, 4 * m - 1, k - 2) : Compare(m10, exp10, 2 * m - 1, k - 1);
                if (down < 0 || (down == 0 && (m & 1) == 1))
                {
                    x = BitConverter.Int64BitsToDouble(bits - 1);
                    continue;
                }
                return x;
            }
            throw new DriverError("cannot parse " + original);
        }

        /// <summary>Sign of (m10 * 10^e10) - (h * 2^e2).</summary>
        private static int Compare(BigInteger m10, int e10, long h, int e2)
        {
            BigInteger left = m10, right = h;
            if (e10 >= 0) left *= BigInteger.Pow(10, e10);
            else right *= BigInteger.Pow(10, -e10);
            if (e2 >= 0) right <<= e2;
            else left <<= -e2;
            return left.CompareTo(right);
        }

        private static ObsEncoding ObsForm(string token)
        {
            if (token.StartsWith("bin:", StringComparison.Ordinal)) return ObsEncoding.Float32Bin;
            if (token.StartsWith("list:", StringComparison.Ordinal)) return ObsEncoding.List;
            throw new DriverError("bad OBS " + token + " (bin:... or list:...)");
        }

        /// <summary>Parses OBS and sets the client's ObsEncoding to its form.</summary>
        private static float[] Obs(string token)
        {
            _client.ObsEncoding = ObsForm(token);
            return ParseNumbers(token);
        }

        private static float[] ParseNumbers(string token)
        {
            string body = token.Substring(token.IndexOf(':') + 1);
            if (body.Length == 0) return new float[0];
            string[] parts = body.Split(',');
            var values = new float[parts.Length];
            for (int i = 0; i < parts.Length; i++) values[i] = (float)Num(parts[i]);
            return values;
        }

        private static bool[] Mask(string token)
        {
            if (!token.StartsWith("mask:", StringComparison.Ordinal)) throw new DriverError("bad MASK " + token);
            string[] parts = token.Substring(5).Split(',');
            var mask = new bool[parts.Length];
            for (int i = 0; i < parts.Length; i++) mask[i] = Flag(parts[i]);
            return mask;
        }

        private static byte[] Unhex(string s)
        {
            if (s == "-") return new byte[0];
            if (s.Length % 2 != 0) throw new DriverError("odd-length hex");
            var b = new byte[s.Length / 2];
            for (int i = 0; i < b.Length; i++)
            {
                b[i] = (byte)((HexDigit(s[2 * i]) << 4) | HexDigit(s[2 * i + 1]));
            }
            return b;
        }

        private static int HexDigit(char ch)
        {
            if (ch >= '0' && ch <= '9') return ch - '0';
            if (ch >= 'a' && ch <= 'f') return ch - 'a' + 10;
            if (ch >= 'A' && ch <= 'F') return ch - 'A' + 10;
            throw new DriverError("bad hex digit '" + ch + "'");
        }

        private static string Hex(byte[] data, int offset, int count)
        {
            const string digits = "0123456789abcdef";
            var chars = new char[count * 2];
            for (int i = 0; i < count; i++)
            {
                byte v = data[offset + i];
                chars[2 * i] = digits[v >> 4];
                chars[2 * i + 1] = digits[v & 15];
            }
            return new string(chars);
        }

        // ------------------------------------------------------------ JSON answers

        private static string Answer(Reply r)
        {
            return r.Ok ? Ok(r.Value) : Error(r.ErrorCode, r.ErrorMessage, r.Retryable);
        }

        private static string Ok(object result)
        {
            var sb = new StringBuilder("{\"ok\": true, \"result\": ");
            Json(sb, result, 0);
            return sb.Append('}').ToString();
        }

        private static string Error(int code, string message, bool retryable)
        {
            var sb = new StringBuilder("{\"ok\": false, \"code\": ");
            sb.Append(code.ToString(Inv)).Append(", \"message\": ");
            JsonString(sb, message ?? "");
            sb.Append(", \"retryable\": ").Append(retryable ? "true" : "false").Append('}');
            return sb.ToString();
        }

        private static void Json(StringBuilder sb, object v, int depth)
        {
            if (depth > 2000) throw new DriverError("value nested too deep for JSON");
            if (v == null) { sb.Append("null"); return; }
            string s = v as string;
            if (s != null) { JsonString(sb, s); return; }
            if (v is bool) { sb.Append((bool)v ? "true" : "false"); return; }
            if (v is float) { JsonDouble(sb, (float)v); return; }
            if (v is double) { JsonDouble(sb, (double)v); return; }
            long l;
            if (Values.TryToLong(v, out l)) { sb.Append(l.ToString(Inv)); return; }
            if (v is ulong) { sb.Append(((ulong)v).ToString(Inv)); return; }
            byte[] bytes = v as byte[];
            if (bytes != null)
            {
                sb.Append("{\"$bin\": \"").Append(Hex(bytes, 0, bytes.Length)).Append("\"}");
                return;
            }
            var map = v as IDictionary;
            if (map != null)
            {
                sb.Append('{');
                bool first = true;
                foreach (DictionaryEntry e in map)
                {
                    if (!first) sb.Append(", ");
                    first = false;
                    JsonString(sb, Convert.ToString(e.Key, Inv));
                    sb.Append(": ");
                    Json(sb, e.Value, depth + 1);
                }
                sb.Append('}');
                return;
            }
            var list = v as IList;
            if (list != null)
            {
                sb.Append('[');
                for (int i = 0; i < list.Count; i++)
                {
                    if (i > 0) sb.Append(", ");
                    Json(sb, list[i], depth + 1);
                }
                sb.Append(']');
                return;
            }
            JsonString(sb, v.ToString());
        }

        /// <summary>17 significant digits (round-trips); NaN/Infinity as Python's json writes them.</summary>
        private static void JsonDouble(StringBuilder sb, double d)
        {
            if (double.IsNaN(d)) { sb.Append("NaN"); return; }
            if (double.IsPositiveInfinity(d)) { sb.Append("Infinity"); return; }
            if (double.IsNegativeInfinity(d)) { sb.Append("-Infinity"); return; }
            if (d == 0 && BitConverter.DoubleToInt64Bits(d) < 0) { sb.Append("-0.0"); return; } // mono writes "0"
            string s = d.ToString("G17", Inv);
            if (s.IndexOf('.') < 0 && s.IndexOf('E') < 0) s += ".0"; // stays a float in JSON readers
            sb.Append(s);
        }

        private static void JsonString(StringBuilder sb, string s)
        {
            sb.Append('"');
            foreach (char ch in s)
            {
                switch (ch)
                {
                    case '"': sb.Append("\\\""); break;
                    case '\\': sb.Append("\\\\"); break;
                    case '\n': sb.Append("\\n"); break;
                    case '\r': sb.Append("\\r"); break;
                    case '\t': sb.Append("\\t"); break;
                    default:
                        if (ch < 0x20 || ch >= 0x7f) sb.Append("\\u").Append(((int)ch).ToString("x4", Inv));
                        else sb.Append(ch);
                        break;
                }
            }
            sb.Append('"');
        }
    }
}
#endif
