import { randomBytes } from 'node:crypto';
import { afterAll, describe, expect, it } from 'vitest';
import { createServer } from 'node:net';
import { EtcdSource } from '../src/stores/etcd.js';
import { deleteUnchangedSince, EtcdWriter, SourceChangedError } from '../src/stores/etcd-writer.js';
import { etcdSource, rawEtcd, servers } from './support/harness.js';

const etcd = rawEtcd();
const source = etcdSource();
afterAll(() => {
  etcd.close();
  source.close();
});

describe('deleting etcd keys read at a revision (finalize --delete-etcd), on a real etcd', () => {
  it('deletes the keys unchanged since the read and keeps those written after it, in txns of 128 retried key by key', async () => {
    const root = `/writer-${randomBytes(3).toString('hex')}/`;
    const keys = Array.from({ length: 300 }, (_, i) => Buffer.from(`${root}k${String(i).padStart(3, '0')}`));
    for (const key of keys) await etcd.put(key).value('read');
    const revision = Number((await etcd.get(keys[0]!.toString()).exec()).header.revision);
    // Late writes after the read: one in the first txn, one in the third; one key deleted and put back.
    await etcd.put(keys[5]!).value('late');
    await etcd.put(keys[290]!).value('late');
    await etcd.delete().key(keys[200]!);
    await etcd.put(keys[200]!).value('recreated');

    const kept = await deleteUnchangedSince(new EtcdWriter(source), keys, revision);

    expect(kept.map(String).sort()).toEqual([keys[5]!, keys[200]!, keys[290]!].map(String));
    const left = await etcd.getAll().prefix(root).strings();
    expect(left).toEqual({ [keys[5]!.toString()]: 'late', [keys[200]!.toString()]: 'recreated', [keys[290]!.toString()]: 'late' });
  });

  it('a txn whose compare fails writes nothing and says so', async () => {
    const root = `/writer-${randomBytes(3).toString('hex')}/`;
    await etcd.put(`${root}a`).value('1');
    await etcd.put(`${root}b`).value('1');
    const revision = Number((await etcd.get(`${root}b`).exec()).header.revision);
    await etcd.put(`${root}b`).value('2');
    await expect(new EtcdWriter(source).applyTxn([
      { verb: 'delete', key: Buffer.from(`${root}a`), unchangedSince: revision },
      { verb: 'delete', key: Buffer.from(`${root}b`), unchangedSince: revision },
    ])).rejects.toBeInstanceOf(SourceChangedError);
    expect(await etcd.getAll().prefix(root).strings()).toEqual({ [`${root}a`]: '1', [`${root}b`]: '2' });
  });

  it('with one endpoint of two down, every write reaches the live one: etcd3 picks an endpoint at random and does not fail over (doctor\'s write probe failed half the time)', async () => {
    // A port nothing listens on: the connection is refused, and the write never left.
    const closed = createServer();
    await new Promise<void>((resolve) => closed.listen(0, '127.0.0.1', resolve));
    const port = (closed.address() as { port: number }).port;
    await new Promise<void>((resolve) => closed.close(() => resolve()));
    const twoMembers = new EtcdSource({ endpoints: [`http://127.0.0.1:${port}`, servers().etcdEndpoint] });
    const root = `/writer-${randomBytes(3).toString('hex')}/`;
    try {
      const writer = new EtcdWriter(twoMembers);
      for (let i = 0; i < 12; i++) {
        await writer.probeWrite(Buffer.from(root));
        await writer.applyTxn([{ verb: 'put', key: Buffer.from(`${root}k${i}`), value: Buffer.from('v') }]);
      }
      expect(Object.keys(await etcd.getAll().prefix(root).strings())).toHaveLength(12);
    } finally {
      twoMembers.close();
    }
  });
});
