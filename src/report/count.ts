/**
 * A count grouped by thousands, as `toLocaleString('en-US')` writes it
 * (`1,234,567`), without Intl: its first use costs about 15 ms, a tenth of a
 * command's start-up.
 */
export function formatCount(n: number): string {
  if (!Number.isSafeInteger(n)) return n.toLocaleString('en-US');
  return String(n).replace(/\B(?=(\d{3})+$)/g, ',');
}
