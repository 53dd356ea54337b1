/**
 * Secrets never appear in output (DESIGN §4). Credentials in URLs are
 * redacted where they are formatted, and every secret the configuration
 * loader resolves is also registered here so the output layer can scrub it
 * from anything it writes, whatever path the text took to get there.
 */
const secrets = new Set<string>();

/** Remember a secret so that {@link scrub} removes it from any text. */
export function registerSecret(secret: string | undefined): void {
  // Very short strings would scrub ordinary words; nobody uses them as tokens.
  if (secret && secret.length >= 4) secrets.add(secret);
}

/** Replaces every registered secret in `text` with `[redacted]`. */
export function scrub(text: string): string {
  let out = text;
  for (const secret of secrets) {
    if (out.includes(secret)) out = out.split(secret).join('[redacted]');
  }
  return out;
}

/** A URL without its user info, password or token-like query parameters. */
export function redactUrl(raw: string): string {
  let url: URL;
  try {
    url = new URL(raw);
  } catch {
    return scrub(raw.replace(/[^\s/@]+:[^\s/@]*@/g, '[redacted]@'));
  }
  if (url.username || url.password) {
    url.username = '';
    url.password = '';
  }
  for (const name of [...url.searchParams.keys()]) {
    if (/token|password|secret|key/i.test(name)) url.searchParams.set(name, 'redacted');
  }
  const text = url.toString();
  // URL adds a trailing slash to bare origins; keep what the user wrote.
  return scrub(raw.endsWith('/') || url.pathname !== '/' ? text : text.replace(/\/$/, ''));
}
