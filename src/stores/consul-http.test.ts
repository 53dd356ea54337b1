import { mkdtempSync, writeFileSync } from 'node:fs';
import { createServer } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { describe, expect, it } from 'vitest';
import { ConsulHttp, ConsulSessionError, ConsulTooLargeError, TxnFailedError, consulErrorFor, isRetryable, withRetries, ConsulResponseError, ConsulUnreachableError } from './consul-http.js';

const addr = 'http://127.0.0.1:8500';
const err = (method: string, path: string, status: number, body: string) => consulErrorFor(addr, method, path, status, Buffer.from(body));

describe('Consul error mapping', () => {
  it('another datacenter whose servers died is unreachable, named, in each of the words Consul says it (not "overloaded or has no leader")', () => {
    for (const body of ['No path to datacenter', 'Remote DC has no server currently reachable', 'rpc error making call: EOF']) {
      const e = consulErrorFor(addr, 'GET', '/v1/kv/_migrate/m/verify/last?dc=dc3', 500, Buffer.from(body), 'dc3');
      expect(e.code, body).toBe('consul_datacenter_unreachable');
      expect(e.message).toContain('datacenter dc3');
      expect(isRetryable(e)).toBe(true);
      // Reported once the retries gave up: a command that ended does not retry meanwhile (it said it did).
      expect(e.hint).toBe('Check the datacenter\'s servers and the WAN federation (`consul members -wan`), then run the command again (a running dual-run retries by itself).');
    }
    // The agent's own datacenter failing a call is a busy or leaderless Consul.
    const busy = err('GET', '/v1/kv/x', 500, 'rpc error making call: EOF');
    expect(busy.code).toBe('consul_unavailable');
    expect(busy.hint).toBe('Consul is overloaded or has no leader, and stayed so while the tool retried with backoff: run the command again once it has a leader (a running dual-run retries by itself).');
  });

  it('a request to an unreachable datacenter is tried twice, not ten times as a busy Consul is (a stopping dual-run waited ~50 s on one)', async () => {
    const unreachable = consulErrorFor(addr, 'PUT', '/v1/session/renew/x?dc=dc3', 500, Buffer.from('Remote DC has no server currently reachable'), 'dc3');
    const busy = err('PUT', '/v1/session/renew/x', 500, 'No cluster leader');
    for (const [e, tries] of [[unreachable, 2], [busy, 10]] as const) {
      let calls = 0;
      await expect(withRetries(async () => {
        calls++;
        throw e;
      }, { baseDelayMs: 1, maxDelayMs: 1 })).rejects.toBe(e);
      expect(calls).toBe(tries);
    }
  });

  it('413 on a value names the limit and is not retried', () => {
    const e = err('PUT', '/v1/kv/big', 413, 'Request body(524289 bytes) too large, max size: 524288 bytes. See https://www.consul.io/docs/agent/options.html#kv_max_value_size.');
    expect(e).toBeInstanceOf(ConsulTooLargeError);
    expect(e.code).toBe('consul_too_large');
    expect(e.message).toContain('max size: 524288 bytes');
    expect(e.exitCode).toBe(3);
    expect(isRetryable(e)).toBe(false);
  });

  it('a plain request to an HTTPS listener says to use https://, not retried', () => {
    const e = err('GET', '/v1/status/leader', 400, 'Client sent an HTTP request to an HTTPS server.');
    expect(e.code).toBe('consul_tls_required');
    expect(e.message).toMatch(/serves HTTPS only/);
    expect(e.exitCode).toBe(3);
    expect(isRetryable(e)).toBe(false);
  });

  it('a 404 for the leader says the address is not a Consul agent; other 404s carry no such hint', () => {
    const e = err('GET', '/v1/status/leader', 404, '404 page not found');
    expect(e.code).toBe('consul_request_failed');
    expect(e.exitCode).toBe(3);
    expect(e.hint).toContain('http://127.0.0.1:8500 is not a Consul HTTP API');
    expect(e.hint).toMatch(/CONSUL_HTTP_ADDR/);
    expect(err('GET', '/v1/catalog/node/x', 404, 'not found').hint).toBeUndefined();
  });

  it('413 on too many txn ops keeps Consul\'s text', () => {
    const e = err('PUT', '/v1/txn', 413, 'Transaction contains too many operations (65 > 64)');
    expect(e).toBeInstanceOf(ConsulTooLargeError);
    expect(e.message).toContain('65 > 64');
    // The op limit, not the byte limits: what to do names txnMaxOps and a run again (it reads the limit again).
    expect(e.hint).toMatch(/fewer ops per txn .*64 before Consul 1\.14, 128 since.*target\.limits\.txnMaxOps .* above the agent's limit.*run the command again/);
    expect(err('PUT', '/v1/kv/big', 413, 'Request body too large').hint).toMatch(/txnMaxBytes \/ maxValueBytes/);
  });

  it('409 on a txn carries every failed check', () => {
    const e = err('PUT', '/v1/txn', 409, JSON.stringify({ Results: null, Errors: [{ OpIndex: 0, What: 'failed index check for key "foo", current modify index 14 != 1' }, { OpIndex: 3, What: 'key "bar" exists' }] }));
    expect(e).toBeInstanceOf(TxnFailedError);
    expect((e as TxnFailedError).errors).toEqual([
      { opIndex: 0, what: 'failed index check for key "foo", current modify index 14 != 1' },
      { opIndex: 3, what: 'key "bar" exists' },
    ]);
  });

  it('409 on a txn an op of which the token may not do is a permission error (exit 3), not a failed check to re-plan', () => {
    const e = err('PUT', '/v1/txn', 409, JSON.stringify({ Results: null, Errors: [{ OpIndex: 0, What: 'Permission denied: token with AccessorID \'5c\' lacks permission \'key:write\' on "_migrate/qab/rules/config"' }] }));
    expect(e).not.toBeInstanceOf(TxnFailedError);
    expect(e).toMatchObject({ code: 'consul_permission_denied', exitCode: 3 });
    expect(e.message).toContain('lacks permission \'key:write\' on "_migrate/qab/rules/config"');
    expect(e.hint).toContain('migrate acl');
  });

  it('500 invalid session is a session error, not an outage', () => {
    const e = err('PUT', '/v1/kv/x', 500, 'raft apply failed: invalid session "0b7e6f7e-5b55-4f0f-9d4b-4f0f2f1d0c11"');
    expect(e).toBeInstanceOf(ConsulSessionError);
    expect(e.code).toBe('consul_session_invalid');
    expect(isRetryable(e)).toBe(false);
    expect(err('PUT', '/v1/session/renew/abc', 404, "Session id 'abc' not found")).toBeInstanceOf(ConsulSessionError);
  });

  it('403 separates a refused token from a missing permission, and says what to do', () => {
    const refused = err('GET', '/v1/agent/self', 403, 'ACL not found');
    expect(refused.code).toBe('consul_token_refused');
    expect(refused.message).toContain('refused the token');
    expect(refused.hint).toMatch(/CONSUL_HTTP_TOKEN/);
    const denied = err('PUT', '/v1/kv/app/x', 403, 'Permission denied: token with AccessorID \'a\' lacks permission \'key:write\' on "app/x"');
    expect(denied.code).toBe('consul_permission_denied');
    expect(denied.message).toContain("key:write");
    expect(denied.hint).toMatch(/migrate acl/);
  });

  it('a datacenter whose catalog lists no server yet is retried (it is coming back)', () => {
    expect(isRetryable(new ConsulResponseError('consul_no_server_node', 500, 'Consul datacenter dc2 lists no server in its catalog', ''))).toBe(true);
  });

  it('429 and 5xx are retryable; 400 is not', () => {
    expect(isRetryable(err('PUT', '/v1/txn', 429, 'rate limit exceeded'))).toBe(true);
    expect(isRetryable(err('GET', '/v1/kv/x', 500, 'No cluster leader'))).toBe(true);
    expect(isRetryable(err('GET', '/v1/kv/x', 503, ''))).toBe(true);
    const bad = err('PUT', '/v1/kv/a%01b', 400, '');
    expect(isRetryable(bad)).toBe(false);
    expect(bad.message).toContain('(empty body)');
  });

  it('a 301 means the key is not one Consul serves at its own path', () => {
    expect(err('PUT', '/v1/kv//lead', 301, '').code).toBe('consul_key_not_servable');
    // Consul 1.13.9 and 1.22.2 answer GET /v1/kv/a//b with a 307.
    expect(err('GET', '/v1/kv/a//b', 307, '').code).toBe('consul_key_not_servable');
  });

  it('Consul 1.21.5\'s 500 "invalid key name" refuses the key: not retried, and says what to do', () => {
    // The agent's text, as 1.21.5 writes it (agent/kvs_endpoint.go).
    const refused = err('GET', '/v1/kv/app/caf%C3%A9', 500, 'invalid key name, keys should respect the "^[a-zA-Z0-9,_./\\-?&=]+$" format');
    expect(refused.code).toBe('consul_key_not_servable');
    expect(isRetryable(refused)).toBe(false);
    expect(refused.message).toBe('Consul refused the key of GET /v1/kv/app/caf%C3%A9: invalid key name, keys should respect the "^[a-zA-Z0-9,_./\\-?&=]+$" format.');
    expect(refused.hint).toMatch(/^Consul 1\.21\.5 serves only keys of a-z A-Z 0-9 , _ \. \/ - \? & = without "\.\." on \/v1\/kv \(1\.21\.6 lifted the rule\): upgrade the Consul agents/);
    expect(err('DELETE', '/v1/kv/app/v1..2', 500, 'invalid key name, path traversal is not allowed').code).toBe('consul_key_not_servable');
  });
});

describe('retries', () => {
  it('retries retryable failures with backoff, then gives up with the last error', async () => {
    let calls = 0;
    const delays: number[] = [];
    const failure = new ConsulResponseError('consul_unavailable', 500, 'no leader', 'no leader');
    await expect(
      withRetries(async () => {
        calls++;
        throw failure;
      }, { attempts: 4, baseDelayMs: 1, random: () => 1, onRetry: (_e, _a, d) => delays.push(d) }),
    ).rejects.toBe(failure);
    expect(calls).toBe(4);
    expect(delays).toEqual([1, 2, 4]);
  });

  it('rides out a leader election: an answering but busy Consul gets more tries than an unreachable one', async () => {
    const count = async (failure: Error) => {
      let calls = 0;
      await expect(withRetries(async () => {
        calls++;
        throw failure;
      }, { baseDelayMs: 1, maxDelayMs: 1 })).rejects.toBe(failure);
      return calls;
    };
    expect(await count(err('PUT', '/v1/txn', 500, 'No cluster leader'))).toBe(10);
    expect(await count(new ConsulUnreachableError('consul_unreachable', 'Consul at 127.0.0.1:8500 is unreachable (ECONNREFUSED).'))).toBe(6);
  });

  it('starts no retry after maxElapsedMs: tries that each wait out a timeout do not add up to minutes', async () => {
    let calls = 0;
    const timedOut = new ConsulUnreachableError('consul_unreachable', 'Consul at 127.0.0.1:8500 is unreachable (ETIMEDOUT).');
    await expect(withRetries(async () => {
      calls++;
      await new Promise((r) => setTimeout(r, 40));
      throw timedOut;
    }, { baseDelayMs: 1, maxDelayMs: 1, maxElapsedMs: 100 })).rejects.toBe(timedOut);
    // About 100 / 41 tries, not the 6 an unreachable Consul otherwise gets.
    expect(calls).toBeGreaterThanOrEqual(2);
    expect(calls).toBeLessThanOrEqual(3);
  });

  it('does not retry what retrying cannot fix', async () => {
    let calls = 0;
    const tooLarge = err('PUT', '/v1/txn', 413, 'too large');
    await expect(withRetries(async () => {
      calls++;
      throw tooLarge;
    }, { attempts: 5, baseDelayMs: 1 })).rejects.toBe(tooLarge);
    expect(calls).toBe(1);
  });

  it('returns as soon as a try succeeds', async () => {
    let calls = 0;
    const value = await withRetries(async () => {
      calls++;
      if (calls < 3) throw new ConsulResponseError('consul_unavailable', 503, 'x', 'x');
      return 'done';
    }, { baseDelayMs: 1 });
    expect(value).toBe('done');
    expect(calls).toBe(3);
  });
});

describe('Consul error messages', () => {
  it('show one line of another server\'s answer, not its whole error page; the body stays whole for checks', () => {
    const page = `<!DOCTYPE html>\n<html><head><title>404 Not Found</title></head>\n<body>${'x'.repeat(5000)}</body></html>\n`;
    const error = err('GET', '/v1/status/leader', 404, page) as ConsulResponseError;
    expect(error.message).toBe('Consul answered GET /v1/status/leader with HTTP 404: <!DOCTYPE html> ….');
    expect(error.hint).toMatch(/is not a Consul HTTP API/);
    expect(error.responseBody).toBe(page.trim());
    const long = err('GET', '/v1/kv/a', 500, 'y'.repeat(1000)) as ConsulResponseError;
    expect(long.message.length).toBeLessThan(300);
  });
});

describe('a token file rotated in place', () => {
  it('found empty (truncated, not yet written again) when Consul refuses the old token: read again until the new token is there, then the request goes through', async () => {
    const seen: string[] = [];
    const server = createServer((req, res) => {
      const token = String(req.headers['x-consul-token'] ?? '');
      seen.push(token);
      if (token === 'new-token-0002' || token === 'new-token-0003') res.writeHead(200).end('"ok"');
      else res.writeHead(403).end('ACL not found');
    });
    await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
    const file = join(mkdtempSync(join(tmpdir(), 'migrate-token-')), 'token');
    writeFileSync(file, 'old-token-0001\n');
    const http = new ConsulHttp({ address: `http://127.0.0.1:${(server.address() as { port: number }).port}`, token: 'old-token-0001', tokenFile: file });
    try {
      // The old token is deleted and the file emptied; the new token lands 600 ms later.
      writeFileSync(file, '');
      const rotation = setTimeout(() => writeFileSync(file, 'new-token-0002\n'), 600);
      const response = await http.request({ method: 'GET', path: '/v1/agent/self' });
      clearTimeout(rotation);
      expect(response.status).toBe(200);
      expect(seen).toEqual(['old-token-0001', 'new-token-0002']);
      // Several requests refused at once while the file is empty: every one goes again with the new token, not only
      // the first to read it (the others found the header already changed and took it for no rotation).
      writeFileSync(file, '');
      (http as unknown as { headers: Record<string, string> }).headers['X-Consul-Token'] = 'old-token-0001';
      setTimeout(() => writeFileSync(file, 'new-token-0003\n'), 400);
      seen.length = 0;
      const many = await Promise.allSettled(Array.from({ length: 5 }, () => http.request({ method: 'GET', path: '/v1/agent/self' })));
      expect(many.map((r) => r.status)).toEqual(['fulfilled', 'fulfilled', 'fulfilled', 'fulfilled', 'fulfilled']);
      // A file that still holds the refused token is no rotation: the refusal stands at once.
      const stale = new ConsulHttp({ address: `http://127.0.0.1:${(server.address() as { port: number }).port}`, token: 'old-token-0001', tokenFile: join(file, '..', 'stale') });
      writeFileSync(join(file, '..', 'stale'), 'old-token-0001');
      await expect(stale.request({ method: 'GET', path: '/v1/agent/self' })).rejects.toMatchObject({ code: 'consul_token_refused' });
      stale.close();
    } finally {
      http.close();
      server.close();
    }
  });
});
