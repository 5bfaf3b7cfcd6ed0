// Package chaos holds kmsgate's fault-injection run and soak (its tests):
// `kmsgate serve`, built from this tree, runs as a process under a steady
// load from a Go load generator while its backend (local-kms, a Vault test
// server, the Cloud KMS fake) fails behind a fault-injecting TCP proxy
// (toxiproxy, used as a library), or for a long time with many distinct
// users. It is a module of its own so that toxiproxy never enters
// kmsgate's go.mod.
//
// Settings (environment):
//
//	KMSGATE_CHAOS_FAULT     how long each fault lasts (default 2.5s; make chaos: 8s)
//	KMSGATE_CHAOS_BACKENDS  comma-separated subset of awskms,vault,gcpkms
//	KMSGATE_CHAOS_FAULTS    comma-separated subset of latency,reset,blackhole,sigstop,kill
//	KMSGATE_CHAOS_RATE      requests per second of each kind (default 20)
//	KMSGATE_SOAK            soak duration (default 60s; make soak: 10m; 0 skips)
//	KMSGATE_SOAK_RATE       soak requests per second in all (default 400)
//	KMSGATE_SOAK_SAMPLE     soak sampling interval (default 10s)
//	KMSGATE_TEST_WORK       when set, the figure tables are also written there
package chaos
