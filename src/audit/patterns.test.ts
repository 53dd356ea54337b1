import { describe, expect, it } from 'vitest';
import { detectKubernetes, detectLock, detectRegistration, leaseHex, parentFolder, proposeServiceRule, serviceFormatOf, serviceNameOf, type PatternPrefix, type RegistrationShape } from './patterns.js';
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

  it('recognises registrations from host:port and JSON values, and how the value is written, never keeping it', () => {
    const reg = (key: string, value: string) => {
      const buffer = Buffer.from(key);
      const slashes = new Int32Array(64);
      const match = detectRegistration(buffer, Buffer.from(value), slashes, findSlashes(buffer, slashes));
      return match && `${buffer.subarray(0, match.end).toString()} ${match.shape}`;
    };
    expect(reg('/services/redis/redis-0', '10.0.0.5:50055')).toBe('/services/redis/ hostport');
    expect(reg('/services/web/a', 'web-1.internal:8080')).toBe('/services/web/ hostport');
    expect(reg('/services/web/b', 'http://[::1]:80')).toBe('/services/web/ url');
    expect(reg('/skydns/local/x', '{"host":"10.0.0.7","port":53,"priority":10}')).toBe('/skydns/local/ skydns');
    expect(reg('/svc/x', '{"address":"10.0.0.7","port":8500}')).toBe('/svc/ json');
    expect(reg('/svc/x', '{"Address":"10.0.0.7","Port":"8500"}')).toBe('/svc/ json:Address/Port');
    expect(reg('/config/x', 'postgres://u@db:5432/x')).toBeUndefined();
    expect(reg('/config/x', '{"host":"a"}')).toBeUndefined();
    expect(reg('/config/x', 'plain text')).toBeUndefined();
  });
});

describe('the service rule the audit proposes for registrations', () => {
  const folder = (prefix: string, keys: number, formats: RegistrationShape[]): PatternPrefix => ({ prefix, keys, leasedKeys: keys, example: `${prefix}x`, rules: ['(identity)'], handling: ['session'], formats });

  it('names the format each value shape needs', () => {
    expect(serviceFormatOf('hostport')).toEqual({ format: 'hostport' });
    expect(serviceFormatOf('skydns')).toEqual({ format: 'skydns' });
    expect(serviceFormatOf('json')).toEqual({ format: 'json' });
    expect(serviceFormatOf('json:Address/Port')).toEqual({ format: 'json', fields: { address: 'Address', port: 'Port' } });
    expect(serviceFormatOf('url')).toBeUndefined();
  });

  it('keeps the default templates for instances two levels below from (Registrator: /services/<name>/<id>)', () => {
    expect(proposeServiceRule('/services/', [folder('/services/web/', 3, ['hostport']), folder('/services/api/', 2, ['hostport'])])).toEqual({ format: 'hostport', name: '{1}', id: '{1}-{-1}', notes: [] });
  });

  it('names the service after from when the instances sit directly under it', () => {
    expect(proposeServiceRule('/svc/web_api/', [folder('/svc/web_api/', 2, ['json:Address/Port'])])).toEqual({ format: 'json', fields: { address: 'Address', port: 'Port' }, name: 'web-api', id: 'web-api-{1}', notes: [] });
  });

  it('deeper, the folder holding the instance names the service and every segment goes into the id', () => {
    expect(proposeServiceRule('/skydns/', [folder('/skydns/local/platform/grpc/', 1, ['skydns']), folder('/skydns/local/platform/auth/', 1, ['skydns'])])).toEqual({ format: 'skydns', name: '{3}', id: '{1}-{2}-{3}-{4}', notes: [] });
  });

  it('says what it could not fit: several depths, several value shapes; nothing for URL values', () => {
    const mixed = proposeServiceRule('/reg/', [folder('/reg/a/', 5, ['hostport', 'url']), folder('/reg/b/c/', 1, ['skydns'])])!;
    expect(mixed).toMatchObject({ format: 'hostport', name: '{-2}', id: '{-2}-{-1}' });
    expect(mixed.notes).toEqual([
      'values are written in several ways (hostport, url, skydns): keys in another than hostport make no instance',
      'instances sit 2 to 3 levels below /reg/: the folder holding each one names its service; check that the ids are unique',
    ]);
    expect(proposeServiceRule('/reg/', [folder('/reg/a/', 5, ['url'])])).toBeUndefined();
  });

  it('finds the folder holding a folder', () => {
    expect(['/services/web/', '/web/', 'web/', 'a/b/c/'].map(parentFolder)).toEqual(['/services/', '/', '', 'a/b/']);
  });

  it('makes service names of letters, digits and dashes', () => {
    expect(serviceNameOf('/services/redis_grpc.v1/')).toBe('redis-grpc-v1');
    expect(serviceNameOf('/___/')).toBe('service');
  });
});
