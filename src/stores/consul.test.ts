import { describe, expect, it } from 'vitest';
import { createServer as httpServer } from 'node:http';
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

describe('the key rule of the agent (Consul 1.21.5 refuses most punctuation on /v1/kv)', () => {
  /** An agent that answers /v1/kv/<probe> with `probe` and /v1/agent/self with 403 (a token without agent:read). */
  async function agent(probe: { status: number; body: string }): Promise<{ target: ConsulTarget; paths: string[]; close: () => void }> {
    const paths: string[] = [];
    const server = httpServer((req, res) => {
      paths.push(`${req.method} ${req.url}`);
      if (req.url!.startsWith('/v1/kv/')) res.writeHead(probe.status).end(probe.body);
      else res.writeHead(403).end('Permission denied');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const target = new ConsulTarget({ address: `http://127.0.0.1:${(server.address() as AddressInfo).port}` }, { retry: { attempts: 1 } });
    return { target, paths, close: () => { target.close(); server.close(); } };
  }

  it('is asked with a GET of a key it would refuse, once, and its answer kept', async () => {
    const strict = await agent({ status: 500, body: 'invalid key name, keys should respect the "^[a-zA-Z0-9,_./\\-?&=]+$" format' });
    try {
      expect(await strict.target.agentLimits()).toEqual({ strictKeys: true });
      expect(await strict.target.agentLimits()).toEqual({ strictKeys: true });
      expect(strict.paths.filter((p) => p.startsWith('GET /v1/kv/'))).toEqual(['GET /v1/kv/migrate-key-rule-probe%3A']);
    } finally {
      strict.close();
    }
  });

  it('every other answer means the usual rules: not found, refused by ACLs, another server error', async () => {
    for (const probe of [{ status: 404, body: '' }, { status: 403, body: 'Permission denied' }, { status: 500, body: 'No cluster leader' }]) {
      const usual = await agent(probe);
      try {
        expect(await usual.target.agentLimits(), JSON.stringify(probe)).toEqual({ strictKeys: false });
      } finally {
        usual.close();
      }
    }
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
