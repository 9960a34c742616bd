package ebpfbackend

//go:generate go tool bpf2go -tags linux -target bpfel -type fw_rule -type fw_pair -type fw_if_key -type fw_if_val -type fw_counter -type fw_settings -type fw_sess4_key -type fw_sess6_key -type fw_sess_val -type fw_hop -type fw_cpu_counters -type fw_flow -type fw_flow_key -type fw_mirror_cfg -type fw_mirror_stats -type fw_pair_key -type fw_stage_prod -type fw_stage_done -type fw_sweep -type fw_recent_pos -cflags "-O2 -g -Wall -Werror -I/usr/include/x86_64-linux-gnu -I../bpf/include" fw ../bpf/xdp_fw.c
