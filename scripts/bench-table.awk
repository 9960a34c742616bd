# Prints the results of netlab.BenchBaselines (go test -v -bench output of
# BenchmarkBaselines in any package) as one table: a line per veth setting
# and row, a column per dataplane, the median of the runs of each cell, and
# its ratio to the column named by -v ref (nftables when unset).
# Used by scripts/bench-baselines.sh and scripts/bench-sessions.sh.
#
# Variables (awk -v):
#   ref     reference column for the ratios ("" for none)
#   rows    space-separated rows in the order to print (all when unset)
#   permin  space-separated rows shown also per udp-64 of the same column
#           (a many-flow row against the single flow)
#   cols    space-separated columns in the order to print first (others
#           follow in the order they appear)
#   targets space-separated checks veth:row:col:ref:min, each printed as
#           met or unmet: the median of (veth, row, col) over the median of
#           (veth, row, ref) when ref names a column, of (veth, REF, col)
#           when ref is @REF (a row of the same column), is at least min;
#           veth * checks every setting. The exit status is 1 when one
#           is unmet, 2 when no figure exists for one.
#   extra   a metric printed under the table per row and column (e.g.
#           prog-ns/pkt), median of the runs
#
# Every figure comes from the benchmark output; a cell no run produced is
# "skip" (the reasons follow the table) or "-".

function median(key,   n, i, j, x, a) {
	n = split(vals[key], a, " ")
	for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { x = a[i]; a[i] = a[j]; a[j] = x }
	return (n % 2) ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
}
function runs(key,   n, i, a, s) {
	n = split(vals[key], a, " ")
	for (i = 1; i <= n; i++) s = s (i > 1 ? ", " : "") fmt(a[i])
	return s
}
function fmt(v) {
	v += 0
	if (v >= 100) return sprintf("%.0f", v)
	if (v >= 10) return sprintf("%.1f", v)
	return sprintf("%.2f", v)
}
function cellkey(veth, row, dp) { return veth SUBSEP row SUBSEP dp }
BEGIN {
	if (ref == "" && !noref) ref = "nftables"
	headline["Gbit/s"] = headline["Mpps"] = headline["Msess/s"] = headline["Mhs/s"] = headline["kconn/s"] = 1
}
# go test -v prints a benchmark's log lines before its --- SKIP/FAIL line.
/^ +[a-z_]+\.go:[0-9]+: / {
	msg = $0; sub(/^ +[a-z_]+\.go:[0-9]+: /, "", msg)
	pending[++npending] = msg
	next
}
/^(--- SKIP|--- FAIL): BenchmarkBaselines\// {
	split($3, p, "/")
	dp = p[2]; sub(/^dp=/, "", dp)
	veth = p[3]; sub(/^veth=/, "", veth)
	row = p[4]; sub(/-[0-9]+$/, "", row)
	if (!(dp in seendp)) { seendp[dp] = 1; dps[++ndp] = dp }
	if (veth != "" && !(veth in seenveth)) { seenveth[veth] = 1; veths[++nveth] = veth }
	if (row != "" && !(row in seenrow)) { seenrow[row] = 1; allrows[++nallrow] = row }
	k = cellkey(veth, row, dp); status[k] = ($2 == "SKIP:") ? "skip" : "FAIL"
	for (i = 1; i <= npending; i++) {
		m = status[k] " " dp (veth != "" ? " veth=" veth : "") (row != "" ? " " row : "") ": " pending[i]
		if (!(m in seenmsg)) { seenmsg[m] = 1; msgs[++nmsg] = m }
	}
	npending = 0
	next
}
{ npending = 0 }
/^BenchmarkBaselines\/dp=[^\/]+\/veth=[^\/]+\/[^ \t]+[ \t]/ {
	split($1, p, "/")
	dp = p[2]; sub(/^dp=/, "", dp)
	veth = p[3]; sub(/^veth=/, "", veth)
	row = p[4]; sub(/-[0-9]+$/, "", row)
	if (!(dp in seendp)) { seendp[dp] = 1; dps[++ndp] = dp }
	if (!(veth in seenveth)) { seenveth[veth] = 1; veths[++nveth] = veth }
	if (!(row in seenrow)) { seenrow[row] = 1; allrows[++nallrow] = row }
	for (i = 3; i < NF; i++) {
		if ($(i + 1) in headline) { vals[cellkey(veth, row, dp)] = vals[cellkey(veth, row, dp)] " " $(i); unit[row] = $(i + 1) }
		if (extra != "" && $(i + 1) == extra) vals[cellkey(veth, row, dp) SUBSEP "x"] = vals[cellkey(veth, row, dp) SUBSEP "x"] " " $(i)
	}
}
END {
	if (!ndp) { print "bench-table: no results (skipped or failed?)" > "/dev/stderr"; exit 1 }
	nc = split(cols, co, " ")
	for (i = 1; i <= nc; i++) if (co[i] in seendp) { ordered[++no] = co[i]; placed[co[i]] = 1 }
	for (i = 1; i <= ndp; i++) if (!(dps[i] in placed)) ordered[++no] = dps[i]
	for (i = 1; i <= no; i++) dps[i] = ordered[i]
	nv = 0
	for (i = 1; i <= nveth; i++) if (veths[i] == "lab") vo[++nv] = "lab"
	for (i = 1; i <= nveth; i++) if (veths[i] != "lab") vo[++nv] = veths[i]
	for (i = 1; i <= nv; i++) veths[i] = vo[i]
	nrow = split(rows, order, " ")
	if (!nrow) for (r = 1; r <= nallrow; r++) order[++nrow] = allrows[r]
	w = 22
	printf "\n%-9s %-11s %-8s", "veth", "row", "unit"
	for (c = 1; c <= ndp; c++) printf(" %" w "s", dps[c])
	printf "\n"
	for (v = 1; v <= nveth; v++) for (r = 1; r <= nrow; r++) {
		row = order[r]
		if (!(row in seenrow)) continue
		printf "%-9s %-11s %-8s", veths[v], row, unit[row]
		for (c = 1; c <= ndp; c++) {
			k = cellkey(veths[v], row, dps[c]); rk = cellkey(veths[v], row, ref)
			if (vals[k] == "") {
				st = "-"
				if (k in status) st = status[k]
				else if (cellkey(veths[v], "", dps[c]) in status) st = status[cellkey(veths[v], "", dps[c])]
				printf(" %" w "s", st)
				continue
			}
			s = fmt(median(k))
			if (ref != "" && dps[c] != ref && vals[rk] != "" && median(rk) > 0) s = s sprintf(" (%.2fx)", median(k) / median(rk))
			printf(" %" w "s", s)
		}
		printf "\n"
	}
	if (ref != "") printf "(x): ratio to %s in the same row.\n", ref
	np = split(permin, pm, " ")
	if (np) {
		printf "\nagainst one flow (udp-64) of the same column:\n"
		for (v = 1; v <= nveth; v++) for (i = 1; i <= np; i++) {
			printf "%-9s %-20s", veths[v], pm[i] " / udp-64"
			for (c = 1; c <= ndp; c++) {
				k = cellkey(veths[v], pm[i], dps[c]); one = cellkey(veths[v], "udp-64", dps[c])
				if (vals[k] == "" || vals[one] == "" || median(one) == 0) { printf(" %" w "s", "-"); continue }
				printf(" %" w "s", sprintf("%.2fx", median(k) / median(one)))
			}
			printf "\n"
		}
	}
	if (extra != "") {
		printf "\n%s (median):\n", extra
		for (v = 1; v <= nveth; v++) for (r = 1; r <= nrow; r++) {
			row = order[r]; line = ""; any = 0
			for (c = 1; c <= ndp; c++) {
				k = cellkey(veths[v], row, dps[c]) SUBSEP "x"
				if (vals[k] != "") { line = line sprintf(" %" w "s", fmt(median(k))); any = 1 } else line = line sprintf(" %" w "s", "-")
			}
			if (any) printf "%-9s %-20s%s\n", veths[v], row, line
		}
	}
	nt = split(targets, tg, " ")
	if (nt) printf "\ntargets:\n"
	for (t = 1; t <= nt; t++) {
		split(tg[t], f, ":")
		for (v = 1; v <= nveth; v++) {
			if (f[1] != "*" && f[1] != veths[v]) continue
			k = cellkey(veths[v], f[2], f[3])
			if (substr(f[4], 1, 1) == "@") { rk = cellkey(veths[v], substr(f[4], 2), f[3]); what = f[3] " " f[2] " / " substr(f[4], 2) }
			else { rk = cellkey(veths[v], f[2], f[4]); what = f[2] " " f[3] " / " f[4] }
			if (cellkey(veths[v], "", f[3]) in status && status[cellkey(veths[v], "", f[3])] == "skip" || status[k] == "skip") {
				printf "  %-9s %-40s >= %-5s skipped (reason below)\n", veths[v], what, f[5]
				continue
			}
			if (vals[k] == "" || vals[rk] == "" || median(rk) == 0) {
				printf "  %-9s %-40s >= %-5s no figure\n", veths[v], what, f[5]
				if (!bad) bad = 2
				continue
			}
			x = median(k) / median(rk)
			printf "  %-9s %-40s >= %-5s %.2fx  %s\n", veths[v], what, f[5], x, (x >= f[5] ? "met" : "UNMET")
			if (x < f[5]) bad = 1
		}
	}
	printf "\nruns per cell (median shown above):\n"
	for (v = 1; v <= nveth; v++) for (r = 1; r <= nrow; r++) for (c = 1; c <= ndp; c++) {
		k = cellkey(veths[v], order[r], dps[c])
		if (vals[k] != "") printf "  %s %s %s: %s\n", veths[v], order[r], dps[c], runs(k)
	}
	for (i = 1; i <= nmsg; i++) printf "%s\n", msgs[i]
	exit bad
}
