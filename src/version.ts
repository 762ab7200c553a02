/** The daemon's version, reported by GetStatus, `--version` and vfio_broker_build_info. */
export const VERSION = '0.1.0';
