import type { IKeyValue } from 'etcd3';
import type { SourceEntry } from './types.js';

/**
 * The wire format of etcd's `KV/Range` call, by hand, for the paged read.
 *
 * `etcd3` decodes a RangeResponse with protobufjs and then turns every int64 of
 * every KeyValue into a string through `long` (its `longs: String` option),
 * only for {@link toEntry} to turn them back into numbers: about 1.3 µs of CPU
 * per key, and the garbage. {@link decodeRangeResponse} goes from the bytes to
 * the {@link SourceEntry} objects directly, in about a tenth of that. The two conversions live side by side
 * so that they stay alike; `etcd-range-codec.test.ts` holds them to that.
 */

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;
const EMPTY: Buffer = Buffer.alloc(0);
const TWO_32 = 4294967296;

/** The fields of etcd's RangeRequest the paged read sets (names as in `rpc.proto`). */
export interface RangeRequest {
  key: Buffer;
  range_end: Buffer;
  limit: number;
  revision: number;
  keys_only: boolean;
  count_only?: boolean;
}

/** What a page read needs from a RangeResponse. */
export interface RangePage {
  /** `header.revision`: the revision the read was taken at (0 when etcd sent no header). */
  revision: number;
  entries: SourceEntry[];
  more: boolean;
  count: number;
}

/** A KeyValue as `etcd3` returns it, as the tool keeps it. */
export function toEntry(kv: IKeyValue): SourceEntry {
  return {
    key: kv.key,
    value: kv.value ?? Buffer.alloc(0),
    createRevision: Number(kv.create_revision),
    modRevision: Number(kv.mod_revision),
    version: Number(kv.version),
    lease: String(kv.lease ?? '0'),
  };
}

/** Proto3 encoding of the request: fields at their default value are left out, which proto3 reads as the default. */
export function encodeRangeRequest(request: RangeRequest): Buffer {
  const parts: Array<ArrayLike<number>> = [];
  const field = (tag: number, bytes: ArrayLike<number>): void => {
    if (bytes.length > 0) parts.push([tag], bytes);
  };
  const bytesField = (tag: number, bytes: Buffer): void => {
    if (bytes.length > 0) parts.push([tag], varint(BigInt(bytes.length)), bytes);
  };
  bytesField(0x0a, request.key); // 1 key
  bytesField(0x12, request.range_end); // 2 range_end
  field(0x18, request.limit === 0 ? [] : varint(BigInt.asUintN(64, BigInt(request.limit)))); // 3 limit
  field(0x20, request.revision === 0 ? [] : varint(BigInt.asUintN(64, BigInt(request.revision)))); // 4 revision
  if (request.keys_only) field(0x40, [1]); // 8 keys_only
  if (request.count_only) field(0x48, [1]); // 9 count_only
  const out = Buffer.allocUnsafe(parts.reduce((sum, part) => sum + part.length, 0));
  let pos = 0;
  for (const part of parts) {
    out.set(part, pos);
    pos += part.length;
  }
  return out;
}

/** One request per page: BigInt keeps the negative (10-byte) case as plain as the rest. */
function varint(value: bigint): number[] {
  const bytes: number[] = [];
  while (value >= 0x80n) {
    bytes.push(Number(value & 0x7fn) | 0x80);
    value >>= 7n;
  }
  bytes.push(Number(value));
  return bytes;
}

/**
 * Decodes a RangeResponse into a {@link RangePage}.
 *
 * Keys and values are views of `message`, as protobufjs makes them on the
 * `etcd3` path (grpc-js hands over a buffer of its own for each message): an
 * entry kept after its page holds that page's whole message alive, as before.
 * Empty keys and values share one zero-length buffer, which nothing can write to.
 */
export function decodeRangeResponse(message: Buffer): RangePage {
  const reader = new WireReader(message);
  const end = message.length;
  let revision = 0;
  const entries: SourceEntry[] = [];
  let more = false;
  let count = 0;
  while (reader.pos < end) {
    const tag = reader.uint32();
    switch (tag) {
      case 0x0a: // 1 header
        revision = readHeaderRevision(reader, reader.limit(), revision);
        break;
      case 0x12: // 2 kvs
        entries.push(readKeyValue(reader, reader.limit()));
        break;
      case 0x18: // 3 more
        reader.int64();
        more = (reader.lo | reader.hi) !== 0;
        break;
      case 0x20: // 4 count
        count = reader.int64();
        break;
      default:
        reader.skip(tag);
    }
  }
  return { revision, entries, more, count };
}

/** ResponseHeader: only `revision` (3, a varint: tag 0x18) is used; a repeated header merges, as protobuf says. */
function readHeaderRevision(reader: WireReader, end: number, revision: number): number {
  while (reader.pos < end) {
    const tag = reader.uint32();
    if (tag === 0x18) revision = reader.int64();
    else reader.skip(tag);
  }
  reader.ended(end);
  return revision;
}

function readKeyValue(reader: WireReader, end: number): SourceEntry {
  let key = EMPTY;
  let value = EMPTY;
  let createRevision = 0;
  let modRevision = 0;
  let version = 0;
  let lease = '0';
  while (reader.pos < end) {
    const tag = reader.uint32();
    switch (tag) {
      case 0x0a: // 1 key
        key = reader.bytes();
        break;
      case 0x10: // 2 create_revision
        createRevision = reader.int64();
        break;
      case 0x18: // 3 mod_revision
        modRevision = reader.int64();
        break;
      case 0x20: // 4 version
        version = reader.int64();
        break;
      case 0x2a: // 5 value
        value = reader.bytes();
        break;
      case 0x30: // 6 lease
        reader.int64();
        lease = int64String(reader.lo, reader.hi);
        break;
      default:
        reader.skip(tag);
    }
  }
  reader.ended(end);
  // The same property order as toEntry, so both make objects of one shape.
  return { key, value, createRevision, modRevision, version, lease };
}

/** A signed int64 in decimal, as `long` prints it; lease ids are random 63-bit numbers. */
function int64String(lo: number, hi: number): string {
  if (hi < 0x200000) return String(hi * TWO_32 + lo);
  return BigInt.asIntN(64, (BigInt(hi) << 32n) | BigInt(lo)).toString();
}

class WireReader {
  pos = 0;
  /** The last int64 read, as two unsigned 32-bit halves. */
  lo = 0;
  hi = 0;

  constructor(private readonly buf: Buffer) {}

  private byte(): number {
    const b = this.buf[this.pos];
    if (b === undefined) throw new RangeError(`RangeResponse ends inside a field (at byte ${this.pos} of ${this.buf.length})`);
    this.pos++;
    return b;
  }

  /** A varint of at most 32 bits (tags and lengths). */
  uint32(): number {
    const b = this.byte();
    if (b < 0x80) return b;
    this.pos--;
    this.int64();
    if (this.hi !== 0) throw new RangeError(`RangeResponse has a length or tag over 32 bits at byte ${this.pos}`);
    return this.lo;
  }

  /**
   * A varint as an int64: sets {@link lo}/{@link hi} and returns it as a number
   * (exact below 2^53; two's complement read as negative, as `long` does).
   */
  int64(): number {
    let lo = 0;
    let hi = 0;
    let b = 0;
    for (let shift = 0; shift < 28; shift += 7) {
      b = this.byte();
      lo |= (b & 0x7f) << shift;
      if (b < 0x80) {
        this.lo = lo;
        this.hi = 0;
        return lo;
      }
    }
    b = this.byte();
    lo = (lo | ((b & 0x7f) << 28)) >>> 0;
    hi = (b & 0x7f) >> 4;
    for (let shift = 3; b >= 0x80; shift += 7) {
      if (shift > 31) throw new RangeError(`RangeResponse has a varint over 10 bytes at byte ${this.pos}`);
      b = this.byte();
      hi |= (b & 0x7f) << shift;
    }
    this.lo = lo;
    this.hi = hi >>> 0;
    return (hi | 0) * TWO_32 + lo;
  }

  /** The end of a length-delimited field that starts here. */
  limit(): number {
    const length = this.uint32();
    const end = this.pos + length;
    if (end > this.buf.length) throw new RangeError(`RangeResponse field of ${length} bytes at byte ${this.pos} runs past the end (${this.buf.length})`);
    return end;
  }

  bytes(): Buffer {
    const end = this.limit();
    const start = this.pos;
    this.pos = end;
    return start === end ? EMPTY : this.buf.subarray(start, end);
  }

  /** A field the decoder does not use, by its wire type. */
  skip(tag: number): void {
    switch (tag & 7) {
      case WIRE_VARINT:
        while (this.byte() >= 0x80);
        return;
      case WIRE_FIXED64:
        this.advance(8);
        return;
      case WIRE_LEN:
        this.pos = this.limit();
        return;
      case WIRE_FIXED32:
        this.advance(4);
        return;
      default:
        throw new RangeError(`RangeResponse has a field of wire type ${tag & 7} (field ${tag >>> 3}), which proto3 does not use`);
    }
  }

  /** An embedded message must end exactly where its length said. */
  ended(end: number): void {
    if (this.pos !== end) throw new RangeError(`RangeResponse has a message that runs past its length (byte ${this.pos}, expected ${end})`);
  }

  private advance(n: number): void {
    if (this.pos + n > this.buf.length) throw new RangeError(`RangeResponse ends inside a field (at byte ${this.pos} of ${this.buf.length})`);
    this.pos += n;
  }
}
