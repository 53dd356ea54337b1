import { afterAll, describe, expect, it } from 'vitest';
import { readFileSync } from 'node:fs';
import { generateTls } from '../../scripts/local-servers.js';
import { EtcdSource } from './etcd.js';
import type { MigrateError } from '../errors.js';

/** grpc-js's error for a failed call: "<code> <NAME>: <details>". */
function grpcError(message: string): Error {
  return Object.assign(new Error(message), { code: 14, details: message.replace(/^\d+ [A-Z_]+: /, '') });
}

describe('EtcdSource.toError: what the operator is told', () => {
  // No call is made: the source only names the endpoint in its messages.
  const source = new EtcdSource({ endpoints: ['https://etcd-1.example:2379'] });
  afterAll(() => source.close());

  it('an etcd with auth on and no user given: etcd_auth_required (exit 2), saying what to set', () => {
    const err = source.toError(grpcError('3 INVALID_ARGUMENT: etcdserver: user name is empty'), 'status');
    expect(err).toMatchObject({ code: 'etcd_auth_required', exitCode: 2, hint: expect.stringContaining('ETCDCTL_USER and ETCDCTL_PASSWORD') });
    expect(err.message).toContain('https://etcd-1.example:2379');
  });

  it("a certificate that does not name the endpoint's host: etcd_tls_failed with a hint about its names, not its CA", () => {
    const err = source.toError(grpcError("14 UNAVAILABLE: No connection established. Last error: Error [ERR_TLS_CERT_ALTNAME_INVALID]: Hostname/IP does not match certificate's altnames: Host: etcd-1.example. is not in the cert's altnames: DNS:localhost"), 'status');
    expect(err).toMatchObject({ code: 'etcd_tls_failed', exitCode: 3, hint: expect.stringContaining('subjectAltName') });
    const unsigned = source.toError(grpcError('14 UNAVAILABLE: No connection established. Last error: Error: unable to verify the first certificate'), 'status');
    expect(unsigned).toMatchObject({ code: 'etcd_tls_failed', hint: expect.stringContaining('it must be the CA that signed the server certificate') });
  });

  it('etcd refusing the client certificate (none, expired, another CA: its alert) is not blamed on the CA; the server\'s own expired certificate neither', () => {
    const refused = source.toError(grpcError('14 UNAVAILABLE: No connection established. Last error: Error: 40C7E1D8F67F0000:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate:../deps/openssl/openssl/ssl/record/rec_layer_s3.c:1605:SSL alert number 42\n (2026-12-05T10:00:00.000Z). Resolution note: '), 'status');
    expect(refused).toMatchObject({ code: 'etcd_tls_failed', hint: expect.stringContaining('etcd refused the client certificate') });
    expect((refused as MigrateError).hint).toContain('ETCDCTL_CERT / ETCDCTL_KEY');
    // One line, without the empty resolution note.
    expect(refused.message).not.toMatch(/\n|Resolution note/);
    const expired = source.toError(grpcError('14 UNAVAILABLE: No connection established. Last error: Error: certificate has expired'), 'status');
    expect(expired).toMatchObject({ code: 'etcd_tls_failed', hint: expect.stringContaining('The certificate etcd presents has expired') });
  });

  it('a TLS failure after the TLS files were renewed (the old certificate expired) is one to retry with them, once: the dual-run goes on', () => {
    const tls = generateTls();
    const files = (cert: string, key: string) => ({ ca: readFileSync(tls.ca), cert: readFileSync(cert), key: readFileSync(key) });
    let current = files(tls.clientCert, tls.clientKey);
    const renewing = new EtcdSource({ endpoints: ['https://127.0.0.1:2379'], tls: { ...current, reread: () => current } });
    try {
      const refused = () => renewing.toError(grpcError('14 UNAVAILABLE: No connection established. Last error: 80BC47CB6A7F0000:error:0A000412:SSL routines:ssl3_read_bytes:sslv3 alert bad certificate'), 'watch');
      // Not renewed: a setting to fix.
      expect(refused()).toMatchObject({ code: 'etcd_tls_failed' });
      // Renewed in place since: retried (transient), with the new files.
      current = files(tls.serverCert, tls.serverKey);
      expect(refused()).toMatchObject({ code: 'etcd_unreachable', message: expect.stringContaining('they were renewed since, and the next connection uses the new ones') });
      // The new files refused as well: a setting to fix again.
      expect(refused()).toMatchObject({ code: 'etcd_tls_failed' });
    } finally {
      renewing.close();
    }
  });

  it('an HTTP server that is not etcd (a 404): etcd_unreachable with the "does not speak etcd\'s gRPC" hint', () => {
    const err = source.toError(Object.assign(new Error('12 UNIMPLEMENTED: Received HTTP status code 404'), { code: 12 }), 'status');
    expect(err).toMatchObject({ code: 'etcd_unreachable', exitCode: 3, hint: expect.stringContaining("does not speak etcd's gRPC") });
  });
});
