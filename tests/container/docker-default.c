/* Runs a program as a default `docker run` (or `podman run`) runs a container's
 * process, for the two layers that decide whether namespaces can be made:
 *
 *   capabilities   the bounding set cut down to Docker's default list (CHOWN,
 *                  DAC_OVERRIDE, FSETID, FOWNER, MKNOD, NET_RAW, SETGID, SETUID,
 *                  SETFCAP, SETPCAP, NET_BIND_SERVICE, SYS_CHROOT, KILL,
 *                  AUDIT_WRITE): CAP_SYS_ADMIN and the rest gone, so root's
 *                  permitted set after exec is that list; inheritable and ambient
 *                  sets emptied
 *   seccomp        moby's default profile (profiles/seccomp/default.json) as it
 *                  stands without CAP_SYS_ADMIN: unshare, setns, mount, umount2,
 *                  pivot_root, and clone with any CLONE_NEW* flag refused with
 *                  EPERM; clone3 answered ENOSYS (so that glibc falls back to
 *                  clone, whose flags a filter can see); the profile's other
 *                  refusals of note (bpf, keyctl, add_key, request_key,
 *                  userfaultfd, perf_event_open, kexec_load, init_module, reboot,
 *                  swapon, personality changes aside) with EPERM
 *   user           --user UID:GID switches to it after the filter, with no
 *                  supplementary groups, as `docker run --user` does
 *   --userns-only  instead of the container: Ubuntu 23.10+'s AppArmor restriction
 *                  of unprivileged user namespaces as a program sees it: a user
 *                  namespace is made, but the namespaces that need capabilities in
 *                  it (mount, network, PID, ...) are refused with EPERM, by unshare
 *                  or clone; the capability set is left as it is
 *
 * Not reproduced: the container's own namespaces, cgroups, the AppArmor profile,
 * the read-only /proc/sys; no_new_privs stays off, as in Docker by default.
 *
 * Usage (as root): docker-default [--userns-only] [--user UID:GID] PROGRAM [ARG...]
 * Build: gcc -O2 -Wall -o docker-default docker-default.c -lseccomp (libseccomp-dev);
 * scripts/container-sim builds and runs it.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <grp.h>
#include <linux/capability.h>
#include <sched.h>
#include <seccomp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static void die(const char *what, int err)
{
	fprintf(stderr, "docker-default: %s: %s\n", what, strerror(err));
	exit(127);
}

static const int kept[] = {
	CAP_CHOWN, CAP_DAC_OVERRIDE, CAP_FSETID, CAP_FOWNER, CAP_MKNOD, CAP_NET_RAW,
	CAP_SETGID, CAP_SETUID, CAP_SETFCAP, CAP_SETPCAP, CAP_NET_BIND_SERVICE,
	CAP_SYS_CHROOT, CAP_KILL, CAP_AUDIT_WRITE,
};

static int is_kept(int cap)
{
	for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
		if (kept[i] == cap)
			return 1;
	return 0;
}

static void drop_capabilities(void)
{
	for (int cap = 0; prctl(PR_CAPBSET_READ, cap, 0, 0, 0) >= 0; cap++)
		if (!is_kept(cap) && prctl(PR_CAPBSET_DROP, cap, 0, 0, 0) < 0)
			die("PR_CAPBSET_DROP", errno);
	if (prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0) < 0)
		die("PR_CAP_AMBIENT_CLEAR_ALL", errno);
	/* Inheritable emptied; effective and permitted keep only the list. */
	struct __user_cap_header_struct hdr = {_LINUX_CAPABILITY_VERSION_3, 0};
	struct __user_cap_data_struct data[2];
	if (syscall(SYS_capget, &hdr, data) < 0)
		die("capget", errno);
	for (int w = 0; w < 2; w++) {
		unsigned mask = 0;
		for (size_t i = 0; i < sizeof kept / sizeof kept[0]; i++)
			if (kept[i] / 32 == w)
				mask |= 1u << (kept[i] % 32);
		data[w].effective &= mask;
		data[w].permitted &= mask;
		data[w].inheritable = 0;
	}
	if (syscall(SYS_capset, &hdr, data) < 0)
		die("capset", errno);
}

static void seccomp_filter(int userns_only)
{
	static const unsigned long new_flags[] = {
		CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC, CLONE_NEWUSER, CLONE_NEWPID,
		CLONE_NEWNET, CLONE_NEWCGROUP,
	};
	static const char *refused[] = {
		"unshare", "setns", "mount", "umount2", "pivot_root", "bpf", "keyctl",
		"add_key", "request_key", "userfaultfd", "perf_event_open", "kexec_load",
		"init_module", "finit_module", "delete_module", "reboot", "swapon", "swapoff",
		"open_by_handle_at", "fsopen", "fsmount", "move_mount", "open_tree",
	};
	scmp_filter_ctx ctx = seccomp_init(SCMP_ACT_ALLOW);
	int r;
	if (!ctx)
		die("seccomp_init", ENOMEM);
	/* Loaded while CAP_SYS_ADMIN is still effective: no no_new_privs needed. */
	r = seccomp_attr_set(ctx, SCMP_FLTATR_CTL_NNP, 0);
	for (size_t i = 0; !r && i < sizeof refused / sizeof refused[0]; i++) {
		if (userns_only)
			break; /* only namespaces are refused: unshare by its flags, below */
		int nr = seccomp_syscall_resolve_name(refused[i]);
		if (nr != __NR_SCMP_ERROR)
			r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), nr, 0);
	}
	/* clone's flags are its first argument on x86-64 and arm64 alike. */
	for (size_t i = 0; !r && i < sizeof new_flags / sizeof new_flags[0]; i++) {
		if (userns_only && new_flags[i] == CLONE_NEWUSER)
			continue;
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(clone), 1,
			SCMP_A0(SCMP_CMP_MASKED_EQ, new_flags[i], new_flags[i]));
		if (!r && userns_only)
			r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(EPERM), SCMP_SYS(unshare), 1,
				SCMP_A0(SCMP_CMP_MASKED_EQ, new_flags[i], new_flags[i]));
	}
	if (!r)
		r = seccomp_rule_add(ctx, SCMP_ACT_ERRNO(ENOSYS), SCMP_SYS(clone3), 0);
	if (!r)
		r = seccomp_load(ctx);
	if (r)
		die("seccomp filter", -r);
	seccomp_release(ctx);
}

int main(int argc, char **argv)
{
	int i = 1, userns_only = 0;
	long uid = -1, gid = -1;
	if (i < argc && !strcmp(argv[i], "--userns-only")) {
		userns_only = 1;
		i++;
	}
	if (i + 1 < argc && !strcmp(argv[i], "--user")) {
		if (sscanf(argv[i + 1], "%ld:%ld", &uid, &gid) != 2) {
			fprintf(stderr, "docker-default: --user UID:GID\n");
			return 2;
		}
		i += 2;
	}
	if (i >= argc) {
		fprintf(stderr, "usage: %s [--userns-only] [--user UID:GID] PROGRAM [ARG...]\n",
			argv[0]);
		return 2;
	}
	seccomp_filter(userns_only);
	if (!userns_only)
		drop_capabilities();
	if (uid >= 0) {
		if (setgroups(0, NULL) < 0)
			die("setgroups", errno);
		if (setresgid(gid, gid, gid) < 0)
			die("setresgid", errno);
		if (setresuid(uid, uid, uid) < 0)
			die("setresuid", errno);
	}
	execvp(argv[i], argv + i);
	die(argv[i], errno);
}
