import fc from 'fast-check';
import { describe, expect, it } from 'vitest';
import { toEntry, type WireEntry } from './consul.js';
import { scanReadResults, txnIndex } from './txn-results.js';

/** What the tool made of an answer before the scan: JSON.parse, then toEntry. */
function parsed(body: string): unknown {
  return ((JSON.parse(body) as { Results: { KV: WireEntry }[] | null }).Results ?? []).map((r) => toEntry(r.KV));
}

/** An answer as Consul's Go encoder writes it (compact; `<`, `>`, `&` escaped). */
function answer(entries: { key: string; value: Buffer | null; flags?: number; session?: string; index?: number }[]): string {
  const kvs = entries.map((e, i) => ({
    KV: {
      LockIndex: e.session ? 1 : 0,
      Key: e.key,
      Flags: e.flags ?? 0,
      Value: e.value === null ? null : e.value.toString('base64'),
      ...(e.session ? { Session: e.session } : {}),
      CreateIndex: 10 + i,
      ModifyIndex: e.index ?? 20 + i,
    },
  }));
  return JSON.stringify({ Results: kvs, Errors: null, Index: 0, LastContact: 0, KnownLeader: true }).replace(/[<>&]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, '0')}`);
}

describe('scanReadResults', () => {
  it('reads what JSON.parse reads: keys, values of every length and padding, flags, sessions, indexes', () => {
    const entries = Array.from({ length: 40 }, (_, i) => ({
      key: `app/é/${i}`,
      value: i === 7 ? null : Buffer.from(Array.from({ length: i * 13 }, (_, j) => (i * 31 + j * 7) & 0xff)),
      flags: i === 3 ? 42 : 0,
      ...(i % 5 === 0 ? { session: '0b7c4f1e-52a4-4ec1-9fbc-24a4c2d7a001' } : {}),
      index: i === 9 ? 999_999_999_999_999 : undefined,
    }));
    const body = answer(entries);
    const scanned = scanReadResults(Buffer.from(body));
    expect(scanned).toEqual(parsed(body));
    expect(scanned![7]!.value.length).toBe(0);
    expect(scanned![5]!.session).toBe('0b7c4f1e-52a4-4ec1-9fbc-24a4c2d7a001');
    expect(scanned![3]!.flags).toBe(42);
  });

  it('reads an empty answer, and one with fields it does not know (Namespace, Partition)', () => {
    expect(scanReadResults(Buffer.from('{"Results":[],"Errors":null}'))).toEqual([]);
    const body = '{"Results":[{"KV":{"LockIndex":0,"Key":"a/b","Flags":0,"Value":"eHk=","Namespace":"default","Partition":"default","CreateIndex":5,"ModifyIndex":6}}],"Errors":null}';
    expect(scanReadResults(Buffer.from(body))).toEqual(parsed(body));
  });

  it('agrees with JSON.parse on any keys and values, or leaves the answer to it', () => {
    fc.assert(
      fc.property(fc.array(fc.record({ key: fc.string({ unit: 'binary', minLength: 1 }), value: fc.uint8Array({ maxLength: 70 }), flags: fc.nat() }), { maxLength: 12 }), (kvs) => {
        const body = answer(kvs.map((kv) => ({ key: kv.key, value: Buffer.from(kv.value), flags: kv.flags })));
        const scanned = scanReadResults(Buffer.from(body));
        // Keys Go escapes (quotes, controls, <>&) are JSON.parse's; every other answer is the scan's.
        if (body.includes('\\')) expect(scanned).toBeUndefined();
        else expect(scanned).toEqual(parsed(body));
      }),
    );
  });

  it.each([
    ['an escape in a key', '{"Results":[{"KV":{"Key":"a\\u003cb","Flags":0,"Value":null,"ModifyIndex":1}}]}'],
    ['white space', '{"Results":[ {"KV":{"Key":"a","Flags":0,"Value":null,"ModifyIndex":1}}]}'],
    ['no results', '{"Results":null,"Errors":null}'],
    ['a nested object', '{"Results":[{"KV":{"Key":"a","Meta":{"x":1},"ModifyIndex":1}}]}'],
    ['a number a double cannot hold exactly', '{"Results":[{"KV":{"Key":"a","Flags":18446744073709551615,"Value":null,"ModifyIndex":1}}]}'],
    ['no ModifyIndex', '{"Results":[{"KV":{"Key":"a","Flags":0,"Value":null}}]}'],
    ['no Key', '{"Results":[{"KV":{"Flags":0,"Value":null,"ModifyIndex":1}}]}'],
    ['a value that is not padded base64', '{"Results":[{"KV":{"Key":"a","Value":"eHk","ModifyIndex":1}}]}'],
    ['a value with a byte outside base64', '{"Results":[{"KV":{"Key":"a","Value":"eH*=","ModifyIndex":1}}]}'],
    ['a value with a space in its base64', '{"Results":[{"KV":{"Key":"a","Value":"eH k","ModifyIndex":1}}]}'],
    ['a value with "=" inside its base64', '{"Results":[{"KV":{"Key":"a","Value":"eH==eHk=","ModifyIndex":1}}]}'],
    ['a service result', '{"Results":[{"Service":{"ID":"x"}}]}'],
    ['a cut-off answer', '{"Results":[{"KV":{"Key":"a","Value":"eHk=","ModifyIndex":1}}'],
  ])('leaves %s to JSON.parse', (_, body) => {
    expect(scanReadResults(Buffer.from(body))).toBeUndefined();
  });

  it('decodes base64url characters as Buffer.from does for JSON.parse\'s result (Consul writes neither)', () => {
    const body = '{"Results":[{"KV":{"Key":"a","Value":"eH-_","ModifyIndex":1}}]}';
    expect(scanReadResults(Buffer.from(body))![0]!.value).toEqual(Buffer.from('eH-_', 'base64'));
  });

  it('gives each value bytes of its own', () => {
    const body = answer([{ key: 'a', value: Buffer.from('first') }, { key: 'b', value: Buffer.from('second') }]);
    const [a, b] = scanReadResults(Buffer.from(body))!;
    b!.value[0] = 0;
    expect(a!.value.toString()).toBe('first');
  });
});

describe('txnIndex', () => {
  /** The largest ModifyIndex JSON.parse finds in a txn's answer. */
  const parsedIndex = (body: string) => {
    const indexes = ((JSON.parse(body) as { Results: { KV: WireEntry }[] | null }).Results ?? []).map((r) => r.KV.ModifyIndex);
    return indexes.length > 0 ? Math.max(...indexes) : undefined;
  };

  it('is the largest ModifyIndex of the answer, whatever its keys and sessions hold', () => {
    fc.assert(
      fc.property(
        fc.array(fc.record({ key: fc.oneof(fc.string({ unit: 'binary', minLength: 1 }), fc.constantFrom('"ModifyIndex":9', 'a","ModifyIndex":99999,"b', '\\"ModifyIndex\\":7')), index: fc.nat({ max: 2 ** 50 }) }), { maxLength: 12 }),
        (kvs) => {
          const body = answer(kvs.map((kv) => ({ key: kv.key, value: null, session: kv.key.length % 2 ? '"ModifyIndex":123456789' : undefined, index: kv.index })));
          expect(txnIndex(Buffer.from(body))).toBe(parsedIndex(body));
        },
      ),
    );
  });

  it('is undefined for an answer without entries (deletes only), and leaves a number it cannot read exactly to JSON.parse', () => {
    expect(txnIndex(Buffer.from('{"Results":null,"Errors":null}'))).toBeUndefined();
    expect(txnIndex(Buffer.from('{"Results":[],"Errors":null}'))).toBeUndefined();
    expect(txnIndex(Buffer.from('{"Results":[{"KV":{"Key":"a","ModifyIndex":1e3}}]}'))).toBe(1000);
    expect(txnIndex(Buffer.from('{"Results":[{"KV":{"Key":"a","ModifyIndex":12345678901234567}}]}'))).toBe(12345678901234568);
  });
});
