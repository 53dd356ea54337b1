import { Etcd3 } from 'etcd3';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startEtcd, type EtcdServer } from '../scripts/local-servers.js';
import { EtcdSource } from '../src/stores/etcd.js';
import { prefixRange } from '../src/stores/key-range.js';

/**
 * The paged read calls etcd over its own HTTP/2 channel (etcd-channel.ts),
 * so an expired session token is its own to handle: with a token that
 * lives one second, a read after the token expired signs in again and reads
 * the whole range, as etcd3's own calls do.
 */
describe('etcd source with auth: an expired session token', () => {
  let etcd: EtcdServer;
  let source: EtcdSource;

  beforeAll(async () => {
    etcd = await startEtcd({ extraArgs: ['--auth-token', 'simple', '--auth-token-ttl', '1'] });
    const root = new Etcd3({ hosts: etcd.endpoint });
    try {
      for (let i = 0; i < 5; i++) await root.put(`/token/k${i}`).value(`v${i}`);
      await root.user('root').create('root-password');
      await root.user('root').addRole('root');
      await root.auth.authEnable();
    } finally {
      root.close();
    }
    source = new EtcdSource({ endpoints: [etcd.endpoint], auth: { username: 'root', password: 'root-password' } });
  });

  afterAll(async () => {
    source?.close();
    await etcd?.stop();
  });

  async function readKeys(): Promise<string[]> {
    const keys: string[] = [];
    for await (const page of source.readPages(prefixRange('/token/'), { pageKeys: 2 })) keys.push(...page.entries.map((e) => e.key.toString()));
    return keys;
  }

  it('signs in again and reads every page', async () => {
    const all = ['/token/k0', '/token/k1', '/token/k2', '/token/k3', '/token/k4'];
    expect(await readKeys()).toEqual(all);
    // etcd's simple tokens expire after --auth-token-ttl seconds without use.
    await new Promise((resolve) => setTimeout(resolve, 3_000));
    expect(await readKeys()).toEqual(all);
    expect(await readKeys()).toEqual(all);
  });
});
