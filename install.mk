# install.mk: `make install` and `make uninstall` for focusd, included by the Makefile. It
# installs the programs, the man pages, the systemd units, the sysusers.d and tmpfiles.d
# entries, the bash completion of focus and the example configuration. It builds nothing
# itself: the programs come from the Makefile's rules.
#
#   make install [DESTDIR=/tmp/stage] [PREFIX=/usr/local] [SYSCONFDIR=/etc] ...
#   make uninstall (same variables)
#
# The systemd directories default to what pkg-config says systemd reads, the completion
# directory to bash-completion's under DATADIR. The example configuration is installed only
# where there is none yet, and uninstalled only while it is unchanged: an administrator's
# edits survive both. Installing to the live system (no DESTDIR) ends with the commands that
# create the user and directories and load the units; the Debian package runs them itself.

PREFIX ?= /usr/local
BINDIR ?= $(PREFIX)/bin
SBINDIR ?= $(PREFIX)/sbin
DATADIR ?= $(PREFIX)/share
MANDIR ?= $(DATADIR)/man
# /usr puts its configuration in /etc, not /usr/etc.
SYSCONFDIR ?= $(if $(filter /usr,$(PREFIX)),/etc,$(PREFIX)/etc)
pkgvar = $(shell $(PKG_CONFIG) $(3) --variable=$(2) $(1) 2>/dev/null)
SYSTEMDUNITDIR ?= $(or $(call pkgvar,systemd,systemdsystemunitdir),$(PREFIX)/lib/systemd/system)
SYSUSERSDIR ?= $(or $(call pkgvar,systemd,sysusersdir),$(PREFIX)/lib/sysusers.d)
TMPFILESDIR ?= $(or $(call pkgvar,systemd,tmpfilesdir),$(PREFIX)/lib/tmpfiles.d)
BASHCOMPDIR ?= $(or $(call pkgvar,bash-completion,completionsdir,\
                  --define-variable=datadir=$(DATADIR)),$(DATADIR)/bash-completion/completions)
INSTALL ?= install

INSTALL_UNITS := focusd.service focusd.socket focusd-nvidia.service
INSTALL_MAN := man/focus.1 man/focus-run.1 man/focusd.conf.5 man/focusd.8 $(wildcard man/focusd-protocol.7)

# The units name the programs and the configuration by their /usr and /etc paths; other
# prefixes are written in as the units are installed.
UNIT_SED := -e 's|/usr/sbin/focusd|$(SBINDIR)/focusd|g' -e 's|/etc/focusd/|$(SYSCONFDIR)/focusd/|g'

.PHONY: install uninstall
install: $(BUILD)/focusd $(BUILD)/focus $(BUILD)/focus-run
	$(INSTALL) -d $(DESTDIR)$(SBINDIR) $(DESTDIR)$(BINDIR) $(DESTDIR)$(SYSTEMDUNITDIR) \
		$(DESTDIR)$(SYSUSERSDIR) $(DESTDIR)$(TMPFILESDIR) $(DESTDIR)$(BASHCOMPDIR) \
		$(DESTDIR)$(SYSCONFDIR)/focusd
	$(INSTALL) -m 0755 $(BUILD)/focusd $(DESTDIR)$(SBINDIR)/focusd
	$(INSTALL) -m 0755 $(BUILD)/focus $(BUILD)/focus-run $(DESTDIR)$(BINDIR)/
	for m in $(INSTALL_MAN); do \
		s=$${m##*.}; $(INSTALL) -d $(DESTDIR)$(MANDIR)/man$$s && \
		$(INSTALL) -m 0644 $$m $(DESTDIR)$(MANDIR)/man$$s/ || exit 1; \
	done
	for u in $(INSTALL_UNITS); do \
		sed $(UNIT_SED) systemd/$$u > $(DESTDIR)$(SYSTEMDUNITDIR)/$$u && \
		chmod 0644 $(DESTDIR)$(SYSTEMDUNITDIR)/$$u || exit 1; \
	done
	$(INSTALL) -m 0644 systemd/focusd.sysusers $(DESTDIR)$(SYSUSERSDIR)/focusd.conf
	$(INSTALL) -m 0644 systemd/focusd.tmpfiles $(DESTDIR)$(TMPFILESDIR)/focusd.conf
	$(INSTALL) -m 0644 client/bash-completion/focus $(DESTDIR)$(BASHCOMPDIR)/focus
	if [ -e $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf ]; then \
		echo "keeping $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf"; \
	else \
		$(INSTALL) -m 0644 etc/focusd.conf $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf; \
	fi
	@if [ -z "$(DESTDIR)" ]; then \
		echo "next: systemd-sysusers && systemd-tmpfiles --create focusd.conf &&"; \
		echo "      systemctl daemon-reload && systemctl enable --now focusd.socket focusd"; \
	fi

uninstall:
	rm -f $(DESTDIR)$(SBINDIR)/focusd $(DESTDIR)$(BINDIR)/focus $(DESTDIR)$(BINDIR)/focus-run
	for m in $(INSTALL_MAN); do rm -f $(DESTDIR)$(MANDIR)/man$${m##*.}/$${m#man/}; done
	for u in $(INSTALL_UNITS); do rm -f $(DESTDIR)$(SYSTEMDUNITDIR)/$$u; done
	rm -f $(DESTDIR)$(SYSUSERSDIR)/focusd.conf $(DESTDIR)$(TMPFILESDIR)/focusd.conf \
		$(DESTDIR)$(BASHCOMPDIR)/focus
	if cmp -s etc/focusd.conf $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf; \
		rmdir $(DESTDIR)$(SYSCONFDIR)/focusd 2>/dev/null || true; \
	elif [ -e $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf ]; then \
		echo "keeping the edited $(DESTDIR)$(SYSCONFDIR)/focusd/focusd.conf"; \
	fi
