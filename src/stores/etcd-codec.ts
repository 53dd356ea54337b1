import type { IKeyValue } from 'etcd3';
import type { SourceEntry } from './types.js';

/**
 * The wire format of the etcd calls every command makes, by hand: `KV/Range`
 * (the paged read), `Maintenance/Status` and `Auth/Authenticate`. With these,
 * a command that only reads etcd runs on `node:http2` alone (`etcd-channel.ts`);
 * `etcd3`, which compiles etcd's whole `rpc.proto` with protobufjs when it
 * loads, is loaded only by the commands that watch, write or read leases.
 *
 * `etcd3` decodes a RangeResponse with protobufjs and then turns every int64 of
 * every KeyValue into a string through `long` (its `longs: String` option),
 * only for {@link toEntry} to turn them back into numbers: about 1.3 µs of CPU
 * per key, and the garbage. {@link decodeRangeResponse} goes from the bytes to
 * the {@link SourceEntry} objects directly, in about a tenth of that. The two conversions live side by side
 * so that they stay alike; `etcd-codec.test.ts` holds them to that.
 */

const WIRE_VARINT = 0;
const WIRE_FIXED64 = 1;
const WIRE_LEN = 2;
const WIRE_FIXED32 = 5;
const EMPTY: Buffer = Buffer.alloc(0);
const TWO_32 = 4294967296;

/** A unary method of etcd's API with its hand codec. */
export interface UnaryMethod<Req, Res> {
  path: string;
  encode: (request: Req) => Buffer;
  decode: (message: Buffer) => Res;
}

export const RANGE: UnaryMethod<RangeRequest, RangePage> = { path: '/etcdserverpb.KV/Range', encode: (r) => encodeRangeRequest(r), decode: (m) => decodeRangeResponse(m) };
export const STATUS: UnaryMethod<void, StatusReply> = { path: '/etcdserverpb.Maintenance/Status', encode: () => Buffer.alloc(0), decode: (m) => decodeStatusResponse(m) };
export const AUTHENTICATE: UnaryMethod<{ name: string; password: string }, { token: string }> = {
  path: '/etcdserverpb.Auth/Authenticate',
  encode: (r) => encodeAuthenticateRequest(r),
  decode: (m) => decodeAuthenticateResponse(m),
};

/** The fields of etcd's RangeRequest the paged read sets (names as in `rpc.proto`). */
export interface RangeRequest {
  key: Buffer;
  range_end: Buffer;
  limit: number;
  revision: number;
  keys_only: boolean;
  count_only?: boolean;
  /** Only keys last modified at this revision or later. */
  min_mod_revision?: number;
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
  field(0x50, !request.min_mod_revision ? [] : varint(BigInt.asUintN(64, BigInt(request.min_mod_revision)))); // 10 min_mod_revision
  const out = Buffer.allocUnsafe(parts.reduce((sum, part) => sum + part.length, 0));
  let pos = 0;
  for (const part of parts) {
    out.set(part, pos);
    pos += part.length;
  }
  return out;
}

/** etcd's StatusResponse, as the tool uses it (uint64 ids in decimal). */
export interface StatusReply {
  clusterId: string;
  memberId: string;
  revision: number;
  version: string;
  dbSize: number;
  leader: string;
}

/** Decodes a StatusResponse (`header` 1, `version` 2, `dbSize` 3, `leader` 4; the rest is not used). */
export function decodeStatusResponse(message: Buffer): StatusReply {
  const reader = new WireReader(message, 'StatusResponse');
  const reply: StatusReply = { clusterId: '0', memberId: '0', revision: 0, version: '', dbSize: 0, leader: '0' };
  while (reader.pos < message.length) {
    const tag = reader.uint32();
    if (tag === 0x0a) {
      const end = reader.limit();
      while (reader.pos < end) {
        const field = reader.uint32();
        if (field === 0x08) reply.clusterId = reader.uint64String(); // 1 cluster_id
        else if (field === 0x10) reply.memberId = reader.uint64String(); // 2 member_id
        else if (field === 0x18) reply.revision = reader.int64(); // 3 revision
        else reader.skip(field);
      }
      reader.ended(end);
    } else if (tag === 0x12) reply.version = reader.bytes().toString('utf8');
    else if (tag === 0x18) reply.dbSize = reader.int64();
    else if (tag === 0x20) reply.leader = reader.uint64String();
    else reader.skip(tag);
  }
  return reply;
}

/** An AuthenticateRequest: `name` 1, `password` 2. */
export function encodeAuthenticateRequest(request: { name: string; password: string }): Buffer {
  const parts: Buffer[] = [];
  for (const [tag, text] of [[0x0a, request.name], [0x12, request.password]] as const) {
    const bytes = Buffer.from(text, 'utf8');
    if (bytes.length > 0) parts.push(Buffer.from([tag, ...varint(BigInt(bytes.length))]), bytes);
  }
  return Buffer.concat(parts);
}

/** The `token` (2) of an AuthenticateResponse. */
export function decodeAuthenticateResponse(message: Buffer): { token: string } {
  const reader = new WireReader(message, 'AuthenticateResponse');
  let token = '';
  while (reader.pos < message.length) {
    const tag = reader.uint32();
    if (tag === 0x12) token = reader.bytes().toString('utf8');
    else reader.skip(tag);
  }
  return { token };
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
  const reader = new WireReader(message, 'RangeResponse');
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

  /** `what`: the message's name in rpc.proto, for errors. */
  constructor(private readonly buf: Buffer, private readonly what: string) {}

  private byte(): number {
    const b = this.buf[this.pos];
    if (b === undefined) throw new RangeError(`${this.what} ends inside a field (at byte ${this.pos} of ${this.buf.length})`);
    this.pos++;
    return b;
  }

  /** A varint of at most 32 bits (tags and lengths). */
  uint32(): number {
    const b = this.byte();
    if (b < 0x80) return b;
    this.pos--;
    this.int64();
    if (this.hi !== 0) throw new RangeError(`${this.what} has a length or tag over 32 bits at byte ${this.pos}`);
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
      if (shift > 31) throw new RangeError(`${this.what} has a varint over 10 bytes at byte ${this.pos}`);
      b = this.byte();
      hi |= (b & 0x7f) << shift;
    }
    this.lo = lo;
    this.hi = hi >>> 0;
    return (hi | 0) * TWO_32 + lo;
  }

  /** A uint64 varint in decimal, as `long` prints it for etcd3 (ids: cluster, member, leader). */
  uint64String(): string {
    this.int64();
    return this.hi < 0x200000 ? String(this.hi * TWO_32 + this.lo) : ((BigInt(this.hi) << 32n) | BigInt(this.lo)).toString();
  }

  /** The end of a length-delimited field that starts here. */
  limit(): number {
    const length = this.uint32();
    const end = this.pos + length;
    if (end > this.buf.length) throw new RangeError(`${this.what} field of ${length} bytes at byte ${this.pos} runs past the end (${this.buf.length})`);
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
        throw new RangeError(`${this.what} has a field of wire type ${tag & 7} (field ${tag >>> 3}), which proto3 does not use`);
    }
  }

  /** An embedded message must end exactly where its length said. */
  ended(end: number): void {
    if (this.pos !== end) throw new RangeError(`${this.what} has a message that runs past its length (byte ${this.pos}, expected ${end})`);
  }

  private advance(n: number): void {
    if (this.pos + n > this.buf.length) throw new RangeError(`${this.what} ends inside a field (at byte ${this.pos} of ${this.buf.length})`);
    this.pos += n;
  }
}
