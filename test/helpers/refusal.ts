import type { BrokerError } from '../../src/broker/errors.js';

/** The BrokerError `fn` throws; fails the test when it throws nothing. */
export function refusal(fn: () => void): BrokerError {
  try {
    fn();
  } catch (err) {
    return err as BrokerError;
  }
  throw new Error('expected a refusal');
}
