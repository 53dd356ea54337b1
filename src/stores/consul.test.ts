import { describe, expect, it } from 'vitest';
import { createServer, type AddressInfo } from 'node:net';
import { ConsulTarget, enforcedLimits } from './consul.js';

describe('the limits an agent enforces, from its DebugConfig', () => {
  it('a txn body may be as long as the larger of txn_max_req_len and kv_max_value_size', () => {
    expect(enforcedLimits({ TxnMaxReqLen: 524288, KVMaxValueSize: 524288 })).toEqual({ txnMaxBytes: 524288, maxValueBytes: 524288 });
    expect(enforcedLimits({ TxnMaxReqLen: 20000, KVMaxValueSize: 1000 })).toEqual({ txnMaxBytes: 20000, maxValueBytes: 1000 });
    // Consul's convertOps: a raised kv_max_value_size raises the txn limit with it.
    expect(enforcedLimits({ TxnMaxReqLen: 524288, KVMaxValueSize: 2097152 })).toEqual({ txnMaxBytes: 2097152, maxValueBytes: 2097152 });
  });

  it('claims nothing it was not shown', () => {
    expect(enforcedLimits(undefined)).toEqual({});
    expect(enforcedLimits({})).toEqual({});
    expect(enforcedLimits({ TxnMaxReqLen: '524288', KVMaxValueSize: -1 })).toEqual({});
    expect(enforcedLimits({ TxnMaxReqLen: 0, KVMaxValueSize: 1.5 })).toEqual({});
    expect(enforcedLimits({ KVMaxValueSize: 4096 })).toEqual({ txnMaxBytes: 4096, maxValueBytes: 4096 });
  });
});

describe('ConsulTarget.observeRetries', () => {
  it('hears every retry of a request, its other datacenters\' included, then the error', async () => {
    const server = createServer((socket) => socket.destroy());
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const { port } = server.address() as AddressInfo;
    const target = new ConsulTarget({ address: `http://127.0.0.1:${port}` }, { retry: { attempts: 3, baseDelayMs: 1 } });
    const heard: [string, number][] = [];
    target.observeRetries((err, attempt) => heard.push([(err as { code: string }).code, attempt]));
    try {
      await expect(target.readKey('a')).rejects.toMatchObject({ code: 'consul_unreachable' });
      expect(heard).toEqual([['consul_unreachable', 1], ['consul_unreachable', 2]]);
      await expect(target.forDatacenter('dc2').readKey('a')).rejects.toMatchObject({ code: 'consul_unreachable' });
      expect(heard).toHaveLength(4);
    } finally {
      target.close();
      server.close();
    }
  });
});
