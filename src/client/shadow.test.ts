import { describe, expect, it } from 'vitest';
import { compareShadow, RecentWrites, sampled } from './shadow.js';

const a = Buffer.from('a');
const b = Buffer.from('b');

describe('compareShadow', () => {
  it('names the store that lacks the key, from either owner', () => {
    expect(compareShadow('etcd', a, Buffer.from('a'))).toBe('match');
    expect(compareShadow('etcd', undefined, undefined)).toBe('match');
    expect(compareShadow('etcd', a, undefined)).toBe('missing-in-consul');
    expect(compareShadow('consul', a, undefined)).toBe('missing-in-etcd');
    expect(compareShadow('consul', undefined, a)).toBe('missing-in-consul');
    expect(compareShadow('etcd', a, b)).toBe('value-differs');
  });

  it('tells an empty value from a missing key', () => {
    expect(compareShadow('etcd', Buffer.alloc(0), undefined)).toBe('missing-in-consul');
    expect(compareShadow('etcd', Buffer.alloc(0), Buffer.alloc(0))).toBe('match');
  });
});

describe('RecentWrites', () => {
  it('remembers a key for the window only, byte-exact', () => {
    let now = 1_000;
    const recent = new RecentWrites(500, () => now);
    recent.note(Buffer.from([0x61, 0xff]));
    expect(recent.recent(Buffer.from([0x61, 0xff]))).toBe(true);
    expect(recent.recent(Buffer.from([0x61, 0xfe]))).toBe(false);
    now += 500;
    expect(recent.recent(Buffer.from([0x61, 0xff]))).toBe(true);
    now += 1;
    expect(recent.recent(Buffer.from([0x61, 0xff]))).toBe(false);
  });

  it('forgets old keys as new ones come, and a rewrite refreshes a key', () => {
    let now = 0;
    const recent = new RecentWrites(100, () => now);
    recent.note(Buffer.from('x'));
    recent.note(Buffer.from('y'));
    now = 90;
    recent.note(Buffer.from('x'));
    now = 150;
    recent.note(Buffer.from('z'));
    expect(recent.size).toBe(2);
    expect(recent.recent(Buffer.from('x'))).toBe(true);
    expect(recent.recent(Buffer.from('y'))).toBe(false);
  });
});

describe('sampled', () => {
  it('always at 1, never at 0, by the random source in between', () => {
    expect(sampled(1, () => 0.99)).toBe(true);
    expect(sampled(0, () => 0)).toBe(false);
    expect(sampled(0.25, () => 0.2)).toBe(true);
    expect(sampled(0.25, () => 0.3)).toBe(false);
  });
});
