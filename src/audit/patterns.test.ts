import { describe, expect, it } from 'vitest';
import { detectKubernetes, detectLock, detectRegistration, leaseHex } from './patterns.js';
import { findSlashes } from './prefix-tree.js';

function at(key: string, fn: (key: Buffer, slashes: Int32Array, count: number) => number): string | undefined {
  const buffer = Buffer.from(key);
  const slashes = new Int32Array(64);
  const end = fn(buffer, slashes, findSlashes(buffer, slashes));
  return end === -1 ? undefined : buffer.subarray(0, end).toString();
}

describe('pattern detectors', () => {
  it('recognises a Kubernetes registry at any depth, and the protobuf magic under a custom prefix', () => {
    const none = Buffer.alloc(0);
    expect(at('/registry/pods/default/web', (k, s, c) => detectKubernetes(k, none, s, c))).toBe('/registry/');
    expect(at('/t-1/registry/secrets/ns/x', (k, s, c) => detectKubernetes(k, none, s, c))).toBe('/t-1/registry/');
    expect(at('registry/pods/x', (k, s, c) => detectKubernetes(k, none, s, c))).toBe('registry/');
    expect(at('/app/registry/images/x', (k, s, c) => detectKubernetes(k, none, s, c))).toBeUndefined();
    expect(at('/kubernetes.io/pods/ns/x', (k, s, c) => detectKubernetes(k, Buffer.from('k8s\0...'), s, c))).toBe('/kubernetes.io/');
  });

  it('recognises lock and election folders, and concurrency keys named after their lease', () => {
    expect(at('/locks/nightly', (k, s, c) => detectLock(k, s, c, undefined))).toBe('/locks/');
    expect(at('/t-1/svc/election/group/x', (k, s, c) => detectLock(k, s, c, undefined))).toBe('/t-1/svc/election/');
    // A key named "leader" is a value, not a folder.
    expect(at('/app/leader', (k, s, c) => detectLock(k, s, c, undefined))).toBeUndefined();
    const hex = leaseHex('7587866012429716000');
    expect(hex).toBe(BigInt('7587866012429716000').toString(16));
    expect(at(`/jobs/cron/${hex}`, (k, s, c) => detectLock(k, s, c, hex))).toBe('/jobs/cron/');
    expect(at('/jobs/cron/abc', (k, s, c) => detectLock(k, s, c, hex))).toBeUndefined();
  });

  it('recognises registrations from host:port and JSON values, never keeping them', () => {
    const reg = (key: string, value: string) => at(key, (k, s, c) => detectRegistration(k, Buffer.from(value), s, c));
    expect(reg('/services/redis/redis-0', '10.0.0.5:50055')).toBe('/services/redis/');
    expect(reg('/services/web/a', 'web-1.internal:8080')).toBe('/services/web/');
    expect(reg('/services/web/b', 'http://[::1]:80')).toBe('/services/web/');
    expect(reg('/skydns/local/x', '{"host":"10.0.0.7","port":53}')).toBe('/skydns/local/');
    expect(reg('/svc/x', '{"Address":"10.0.0.7","Port":"8500"}')).toBe('/svc/');
    expect(reg('/config/x', 'postgres://u@db:5432/x')).toBeUndefined();
    expect(reg('/config/x', '{"host":"a"}')).toBeUndefined();
    expect(reg('/config/x', 'plain text')).toBeUndefined();
  });
});
