/** TLS files as read for a server, and how to read them again. */
export interface TlsMaterial {
  ca?: Buffer;
  cert?: Buffer;
  key?: Buffer;
  /**
   * The same files read again, for the next connection: a certificate renewed in
   * place (cert-manager, Vault agent) is used from then on, so a dual-run that runs
   * for weeks outlives the certificate it started with. Undefined when they cannot
   * be read or used now (a renewal half written): the files in use stay.
   */
  reread?: () => TlsFiles | undefined;
}

export type TlsFiles = Pick<TlsMaterial, 'ca' | 'cert' | 'key'>;

/** Whether two sets of TLS files hold the same bytes. */
export function sameTlsFiles(a: TlsFiles | undefined, b: TlsFiles | undefined): boolean {
  const same = (x: Buffer | undefined, y: Buffer | undefined) => (x && y ? x.equals(y) : x === y);
  return same(a?.ca, b?.ca) && same(a?.cert, b?.cert) && same(a?.key, b?.key);
}

/** A TLS failure's reason on one line: OpenSSL's text spans several (grpc-js adds a timestamp and an empty "Resolution note"), without a closing stop. */
export function tlsReason(message: string): string {
  return message.replace(/\s*Resolution note:\s*\.?\s*$/, '').split('\n').map((line) => line.trim()).filter(Boolean).join(' ').replace(/[\s.]+$/, '');
}

/** Where the tool takes each server's TLS files from, for the hints. */
const SETTINGS = {
  etcd: { ca: 'ETCDCTL_CACERT (or source.tls.ca)', client: 'ETCDCTL_CERT / ETCDCTL_KEY (or source.tls.cert / key)' },
  Consul: { ca: 'CONSUL_CACERT (or target.tls.ca)', client: 'CONSUL_CLIENT_CERT / CONSUL_CLIENT_KEY (or target.tls.cert / key)' },
} as const;

/**
 * What to do about a failed TLS handshake, from OpenSSL's reason (`message`, and
 * Node's error `code`): the server refusing the client certificate (none given,
 * expired, or of a CA it does not trust: the server's alert), the server's own
 * certificate expired, or naming another host. Undefined for anything else: the
 * caller's hint stands (the CA).
 */
export function tlsFailureHint(server: keyof typeof SETTINGS, message: string, code = ''): string | undefined {
  const settings = SETTINGS[server];
  if (/alert (bad certificate|certificate required|unknown ca|certificate expired|certificate revoked|certificate unknown)/i.test(message) || /ALERT_(BAD_CERTIFICATE|CERTIFICATE_REQUIRED|UNKNOWN_CA|CERTIFICATE_EXPIRED|CERTIFICATE_REVOKED|CERTIFICATE_UNKNOWN)/.test(code)) {
    return `${server} refused the client certificate: none was given while it requires one, or it expired, or it was signed by a CA ${server} does not trust. Check ${settings.client}; a certificate renewed in place is read again at the next connection.`;
  }
  if (/certificate has expired|certificate is not yet valid|CERT_HAS_EXPIRED|CERT_NOT_YET_VALID/i.test(`${message} ${code}`)) {
    return `The certificate ${server} presents has expired (or is not valid yet): renew it on the server (\`openssl x509 -noout -dates\` shows its dates), or check this host's clock.`;
  }
  if (/does not match certificate's altnames|ERR_TLS_CERT_ALTNAME_INVALID/i.test(`${message} ${code}`)) {
    return `The certificate ${server} presents does not name the host of the address: name ${server} by a host name or IP address its certificate lists (subjectAltName), or reissue the certificate with that name.`;
  }
  return undefined;
}
