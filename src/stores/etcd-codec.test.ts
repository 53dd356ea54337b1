import { createRequire } from 'node:module';
import { loadSync } from '@grpc/proto-loader';
import fc from 'fast-check';
import protobuf from 'protobufjs';
import type { IRangeResponse } from 'etcd3';
import { describe, expect, it } from 'vitest';
import { decodeAuthenticateResponse, decodeRangeResponse, decodeStatusResponse, encodeAuthenticateRequest, encodeRangeRequest, toEntry, type RangePage, type RangeRequest } from './etcd-codec.js';

// The reference is etcd3's own path: its proto file, loaded with the options its connection pool uses.
const rpcProto = createRequire(import.meta.url).resolve('etcd3/proto/rpc.proto');
const etcdRange = (loadSync(rpcProto, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true })['etcdserverpb.KV'] as unknown as Record<'Range', {
  requestSerialize(request: object): Buffer;
  requestDeserialize(bytes: Buffer): Record<string, unknown>;
  responseDeserialize(bytes: Buffer): IRangeResponse;
}>).Range;
const loaded = loadSync(rpcProto, { keepCase: true, longs: String, enums: String, defaults: true, oneofs: true });
const etcdStatus = (loaded['etcdserverpb.Maintenance'] as unknown as Record<'Status', { responseDeserialize(bytes: Buffer): { header: Record<string, string>; version: string; dbSize: string; leader: string } }>).Status;
const etcdAuthenticate = (loaded['etcdserverpb.Auth'] as unknown as Record<'Authenticate', { requestDeserialize(bytes: Buffer): { name: string; password: string }; responseDeserialize(bytes: Buffer): { token: string } }>).Authenticate;
const types = new protobuf.Root().loadSync(rpcProto, { keepCase: true });
const KeyValue = types.lookupType('mvccpb.KeyValue');
const ResponseHeader = types.lookupType('etcdserverpb.ResponseHeader');
const RangeResponse = types.lookupType('etcdserverpb.RangeResponse');
const StatusResponse = types.lookupType('etcdserverpb.StatusResponse');
const AuthenticateResponse = types.lookupType('etcdserverpb.AuthenticateResponse');

/** What readPages took from etcd3's decoded response before the hand decoder. */
function viaEtcd3(bytes: Buffer): RangePage {
  const response = etcdRange.responseDeserialize(bytes);
  return { revision: Number(response.header.revision), entries: response.kvs.map(toEntry), more: response.more, count: Number(response.count) };
}

/** Buffers as hex, so a failure shows bytes and equality ignores views versus copies. */
function comparable(page: RangePage): unknown {
  return { ...page, entries: page.entries.map((e) => ({ ...e, key: e.key.toString('hex'), value: e.value.toString('hex') })) };
}

const int64 = fc.oneof(
  fc.constant(0n),
  fc.bigInt({ min: 1n, max: 2n ** 28n }),
  fc.bigInt({ min: 1n, max: 2n ** 53n }),
  fc.bigInt({ min: -(2n ** 63n), max: 2n ** 63n - 1n }),
  fc.constantFrom(2n ** 63n - 1n, -(2n ** 63n), -1n, 2n ** 32n, 2n ** 32n - 1n, 2n ** 53n + 1n),
);

/** A field no etcd version here knows, of every wire type proto3 uses. */
const unknownField = (firstFree: number) =>
  fc.tuple(fc.integer({ min: firstFree, max: 2000 }), fc.constantFrom(0, 1, 2, 5), int64, fc.uint8Array({ maxLength: 20 })).map(([field, wire, number, bytes]) => {
    const writer = protobuf.Writer.create().uint32((field << 3) | wire);
    if (wire === 0) writer.int64(number.toString());
    else if (wire === 1) writer.fixed64(BigInt.asUintN(64, number).toString());
    else if (wire === 2) writer.bytes(bytes);
    else writer.fixed32(Number(BigInt.asUintN(32, number)));
    return Buffer.from(writer.finish());
  });

const keyValue = fc.record({
  key: fc.uint8Array({ minLength: 1, maxLength: 40 }),
  // Absent (keys_only), present but empty, or binary.
  value: fc.option(fc.uint8Array({ maxLength: 300 }), { nil: undefined }),
  create_revision: int64,
  mod_revision: int64,
  version: int64,
  lease: int64,
  unknown: fc.array(unknownField(7), { maxLength: 2 }),
});

const rangeResponse = fc.record({
  header: fc.record({ cluster_id: int64, member_id: int64, revision: int64, raft_term: int64, unknown: fc.array(unknownField(5), { maxLength: 2 }) }),
  kvs: fc.array(keyValue, { maxLength: 12 }),
  more: fc.boolean(),
  count: int64,
  unknown: fc.array(unknownField(5), { maxLength: 3 }),
});

type Response = typeof rangeResponse extends fc.Arbitrary<infer T> ? T : never;

/** protobufjs writes the known fields; unknown ones are spliced in, before and after, as a newer etcd could send them. */
function encode(response: Response): Buffer {
  const text = (n: bigint) => n.toString();
  const embedded = (field: number, bytes: Uint8Array) => Buffer.from(protobuf.Writer.create().uint32((field << 3) | 2).bytes(bytes).finish());
  const { header } = response;
  const parts: Uint8Array[] = [...response.unknown.slice(0, 1)];
  parts.push(embedded(1, Buffer.concat([
    ...header.unknown,
    ResponseHeader.encode({ cluster_id: text(header.cluster_id), member_id: text(header.member_id), revision: text(header.revision), raft_term: text(header.raft_term) }).finish(),
  ])));
  for (const kv of response.kvs) {
    const key = KeyValue.encode({ key: kv.key }).finish();
    const rest = KeyValue.encode({
      ...(kv.value === undefined ? {} : { value: kv.value }),
      create_revision: text(kv.create_revision),
      mod_revision: text(kv.mod_revision),
      version: text(kv.version),
      lease: text(kv.lease),
    }).finish();
    parts.push(embedded(2, Buffer.concat([key, ...kv.unknown, rest])));
  }
  parts.push(RangeResponse.encode({ more: response.more, count: text(response.count) }).finish(), ...response.unknown.slice(1));
  return Buffer.concat(parts);
}

describe('decodeRangeResponse', () => {
  it('agrees field by field with etcd3 followed by toEntry, on random responses with unknown fields', () => {
    fc.assert(
      fc.property(rangeResponse, (response) => {
        const bytes = encode(response);
        expect(comparable(decodeRangeResponse(bytes))).toEqual(comparable(viaEtcd3(bytes)));
      }),
      { numRuns: 500 },
    );
  });

  it('reads leases and revisions exactly where a JS number would not', () => {
    const kvs = [
      { key: Buffer.from('a'), lease: '9223372036854775807', create_revision: '1', mod_revision: '9007199254740991', version: '1' },
      { key: Buffer.from('b'), lease: '7587869416539612483', create_revision: '2', mod_revision: '2', version: '2' },
      { key: Buffer.from('c'), lease: '-1', create_revision: '-5', mod_revision: '3', version: '3' },
      { key: Buffer.from('d'), lease: '4294967296', create_revision: '4', mod_revision: '4', version: '4' },
    ];
    const bytes = Buffer.from(RangeResponse.encode({ header: { revision: '12' }, kvs, count: '4' }).finish());
    const page = decodeRangeResponse(bytes);
    expect(page.entries.map((e) => e.lease)).toEqual(['9223372036854775807', '7587869416539612483', '-1', '4294967296']);
    expect(page.entries.map((e) => e.createRevision)).toEqual([1, 2, -5, 4]);
    expect(page.entries[0]!.modRevision).toBe(Number.MAX_SAFE_INTEGER);
    expect(comparable(page)).toEqual(comparable(viaEtcd3(bytes)));
  });

  it('gives empty values for keys_only and an empty page for an empty message', () => {
    const bytes = Buffer.from(RangeResponse.encode({ header: { revision: '7' }, kvs: [{ key: Buffer.from([0, 255]), create_revision: '3', mod_revision: '5', version: '2' }], more: true }).finish());
    expect(decodeRangeResponse(bytes)).toEqual({
      revision: 7,
      entries: [{ key: Buffer.from([0, 255]), value: Buffer.alloc(0), createRevision: 3, modRevision: 5, version: 2, lease: '0' }],
      more: true,
      count: 0,
    });
    expect(decodeRangeResponse(Buffer.alloc(0))).toEqual({ revision: 0, entries: [], more: false, count: 0 });
  });

  it('refuses truncated and malformed messages instead of returning part of a page', () => {
    const bytes = Buffer.from(RangeResponse.encode({ header: { revision: '7' }, kvs: [{ key: Buffer.from('key'), value: Buffer.from('value') }] }).finish());
    for (let cut = 1; cut < bytes.length; cut++) {
      // Some cuts fall between whole fields and are valid shorter messages; the others must throw.
      let reference: unknown;
      try {
        reference = comparable(viaEtcd3(bytes.subarray(0, cut)));
      } catch {
        expect(() => decodeRangeResponse(bytes.subarray(0, cut))).toThrow(RangeError);
        continue;
      }
      expect(comparable(decodeRangeResponse(bytes.subarray(0, cut)))).toEqual(reference);
    }
    // A group (wire type 3), which proto3 never sends.
    expect(() => decodeRangeResponse(Buffer.from([0x2b, 0x2c]))).toThrow(/wire type 3/);
    // A KeyValue whose key runs past the KeyValue's own length.
    expect(() => decodeRangeResponse(Buffer.from([0x12, 0x02, 0x0a, 0x03, 0x61, 0x62, 0x63]))).toThrow(/runs past/);
  });
});

describe('encodeRangeRequest', () => {
  const request = fc.record({
    key: fc.uint8Array({ maxLength: 60 }).map((bytes) => Buffer.from(bytes)),
    range_end: fc.uint8Array({ maxLength: 60 }).map((bytes) => Buffer.from(bytes)),
    limit: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 5000 }), fc.maxSafeInteger()),
    revision: fc.oneof(fc.constant(0), fc.integer({ min: 1, max: 2 ** 31 }), fc.maxSafeNat()),
    keys_only: fc.boolean(),
    count_only: fc.option(fc.boolean(), { nil: undefined }),
  });

  it('writes bytes that protobufjs reads back as the same request as etcd3 would send', () => {
    fc.assert(
      fc.property(request, (fields: RangeRequest) => {
        expect(etcdRange.requestDeserialize(encodeRangeRequest(fields))).toEqual(etcdRange.requestDeserialize(etcdRange.requestSerialize(fields)));
      }),
      { numRuns: 500 },
    );
  });

  it('sets the page fields readPages uses', () => {
    const decoded = etcdRange.requestDeserialize(encodeRangeRequest({ key: Buffer.from('/a/'), range_end: Buffer.from('/a0'), limit: 2000, revision: 123456789, keys_only: true }));
    expect(decoded).toMatchObject({ key: Buffer.from('/a/'), range_end: Buffer.from('/a0'), limit: '2000', revision: '123456789', keys_only: true, count_only: false });
  });
});

describe('decodeStatusResponse', () => {
  const uint64 = fc.oneof(fc.constant(0n), fc.bigInt({ min: 1n, max: 2n ** 53n }), fc.bigInt({ min: 0n, max: 2n ** 64n - 1n }), fc.constantFrom(2n ** 64n - 1n, 2n ** 63n, 2n ** 53n + 1n));
  const status = fc.record({
    header: fc.record({ cluster_id: uint64, member_id: uint64, revision: fc.bigInt({ min: 0n, max: 2n ** 53n - 1n }), raft_term: uint64 }),
    version: fc.string({ maxLength: 12 }),
    dbSize: fc.bigInt({ min: 0n, max: 2n ** 53n - 1n }),
    leader: uint64,
    raftIndex: uint64,
    errors: fc.array(fc.string({ maxLength: 8 }), { maxLength: 2 }),
    isLearner: fc.boolean(),
  });

  it('reads what etcd3 reads (ids as unsigned decimals, as etcd3 gives them), skipping the fields it does not use', () => {
    fc.assert(
      fc.property(status, (fields) => {
        const text = (n: bigint) => n.toString();
        const bytes = Buffer.from(StatusResponse.encode({
          header: { cluster_id: text(fields.header.cluster_id), member_id: text(fields.header.member_id), revision: text(fields.header.revision), raft_term: text(fields.header.raft_term) },
          version: fields.version,
          dbSize: text(fields.dbSize),
          leader: text(fields.leader),
          raftIndex: text(fields.raftIndex),
          errors: fields.errors,
          isLearner: fields.isLearner,
        }).finish());
        const reference = etcdStatus.responseDeserialize(bytes);
        expect(decodeStatusResponse(bytes)).toEqual({
          clusterId: reference.header.cluster_id,
          memberId: reference.header.member_id,
          revision: Number(reference.header.revision),
          version: reference.version,
          dbSize: Number(reference.dbSize),
          leader: reference.leader,
        });
      }),
      { numRuns: 300 },
    );
  });

  it('refuses a truncated message', () => {
    const bytes = Buffer.from(StatusResponse.encode({ header: { cluster_id: '14841639068965178418', revision: '9' }, version: '3.5.16' }).finish());
    expect(decodeStatusResponse(bytes).clusterId).toBe('14841639068965178418');
    expect(() => decodeStatusResponse(bytes.subarray(0, bytes.length - 2))).toThrow(/StatusResponse ends inside a field|runs past/);
  });
});

describe('Authenticate codec', () => {
  it('writes a request etcd3 reads back as the same name and password, and reads the token of a response', () => {
    fc.assert(
      fc.property(fc.string({ maxLength: 30 }), fc.string({ unit: 'grapheme', maxLength: 30 }), fc.string({ maxLength: 60 }), (name, password, token) => {
        expect(etcdAuthenticate.requestDeserialize(encodeAuthenticateRequest({ name, password }))).toEqual({ name, password });
        const bytes = Buffer.from(AuthenticateResponse.encode({ header: { revision: '3' }, token }).finish());
        expect(decodeAuthenticateResponse(bytes)).toEqual({ token: etcdAuthenticate.responseDeserialize(bytes).token });
      }),
      { numRuns: 200 },
    );
  });
});
