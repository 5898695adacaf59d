"""Expected values of every notebook's metrics, with tolerances: the one place they live.

Each notebook writes ``metrics.json``; :func:`check` compares it with the ranges
below. ``"fast"`` ranges are for the small runs of the tests (``FAST=True``),
``"full"`` ranges for the full-size run on the embedded Gemma 3 270M (the
README's run command checks them too, so a reader can tell whether their run
reproduced). Ranges come from measured runs, widened to cover seed and
platform noise; a metric listed here but missing from ``metrics.json`` fails.
"""

from __future__ import annotations

import math

import pandas as pd

Range = tuple[float, float]

EXPECTED: dict[str, dict[str, dict[str, Range]]] = {
    "00_quickstart": {
        "fast": {
            "n_scored": (200, 200),
            "accuracy": (0.45, 0.75),
            "frac_known": (0.25, 0.55),
            "acc_qa_known": (0.6, 1.0),
            "mcq_top_choice_share": (0.55, 0.9),         # 0.73: "D · golf", whatever the athlete
            "load_seconds": (0, 120),
        },
        "full": {
            "n_scored": (1559, 1559),
            "n_known": (540, 680),
            "n_known_basketball": (150, 215),
            "accuracy": (0.53, 0.63),
            "acc_qa_known": (0.75, 1.0),
            "mcq_top_choice_share": (0.6, 0.85),         # 0.73 (D · golf)
        },
    },
    # FAST: 2 facts (Patrick Corbin, Khris Middleton), seed 0; measured values in the comments
    "01_causal_tracing": {
        "fast": {
            "n_facts": (2, 2),
            "p_clean": (0.05, 0.4),                      # measured 0.140
            "p_corrupt": (0.0, 0.02),                    # 0.0011: the noise wipes the subject out
            "resid_last_layer_last_effect": (0.999, 1.001),  # restoring the final state = the clean run
            "peak_attn_last_layer": (9, 15),             # 12
            "peak_attn_last_effect": (0.03, 0.5),        # 0.105
            "peak_mlp_last_subject_layer": (0, 8),       # 3
            "top_head_layer": (8, 16),                   # 11
        },
        # 16 facts (5-6 per sport), seed 0; measured values in the comments (7 min on one CPU core)
        "full": {
            "n_facts": (16, 16),
            "p_clean": (0.2, 0.45),                      # 0.312
            "p_corrupt": (0.0, 0.03),                    # 0.006
            "resid_last_layer_last_effect": (0.999, 1.001),
            "peak_mlp_last_subject_layer": (2, 5),       # 3
            "peak_attn_last_layer": (11, 13),            # 12
            "peak_attn_last_effect": (0.1, 0.4),         # 0.221
            "top_head_layer": (11, 13),                  # 12 (a12.h2)
        },
    },
    # FAST: 2 facts patched both ways, 12 attributed, seed 0; measured twice, identical values
    "02_attribution_patching": {
        "fast": {
            "n_facts": (2, 2),
            "n_facts_ap": (12, 12),
            "ld_clean": (0.3, 3.0),                      # measured 1.006
            "ld_corrupt": (-5.0, -0.3),                  # -1.941
            "resid_last_layer_last_effect": (0.999, 1.001),
            "corr_ap_vs_patching": (0.4, 0.95),          # 0.697
            "corr_head": (0.8, 1.0),                     # 0.985
            "corr_attn": (0.4, 1.0),                     # 0.734
            "peak_mlp_last_subject_layer": (1, 6),       # 3
            "peak_mlp_last_subject_effect": (0.2, 1.0),  # 0.677
            "top_head_layer": (9, 15),                   # 12
            "output_tracing_n_params": (1, 30_000_000),  # 9,503,232 (a12, m3, m0) under a 3-MLP budget
        },
        # 16 facts patched both ways, 192 attributed, seed 0; measured values in the comments
        "full": {
            "n_facts": (16, 16),
            "n_facts_ap": (192, 192),
            "ld_clean": (1.0, 2.5),                      # 1.639
            "ld_corrupt": (-1.5, 0.0),                   # -0.647
            "resid_last_layer_last_effect": (0.999, 1.001),
            "corr_ap_vs_patching": (0.85, 1.0),          # 0.959 over 216 components
            "corr_head": (0.9, 1.0),                     # 0.975
            "corr_attn": (0.9, 1.0),                     # 0.987
            "corr_mlp": (0.75, 1.0),                     # 0.904
            "peak_mlp_last_subject_layer": (2, 4),       # 3
            "top_head_layer": (11, 13),                  # 12 (a12.h2)
            "speedup": (20, 1000),                       # 99: activation patching 421 s vs attribution 4.3 s
        },
    },
    # FAST: 400 athletes read (163 known), probes on a seeded half, attribution patching of 32 facts, seed 0
    "03_fact_lookup_localization": {
        "fast": {
            "n_athletes": (400, 400),
            "n_known": (140, 190),                       # measured 163
            "majority": (0.3, 0.55),                     # 0.427
            "best_probe_acc_last_subject": (0.65, 0.95),  # 0.793
            "best_probe_acc_final": (0.8, 1.0),          # 0.939
            "probe_gain_last_subject": (0.15, 0.6),      # 0.341 over the embeddings
            "probe_gain_final": (0.3, 0.7),              # 0.512: " of" knows nothing at layer 0
            "best_probe_layer_final": (12, 18),          # 17 (the jump is after block 12)
            "probe_acc_embed_final": (0.25, 0.6),        # 0.427 = the majority class
            "flu_start": (1, 5),                         # 3
            "flu_extraction": (9, 15),                   # 12 (a12.h2)
            "flu_first_layer": (1, 4),                   # 3
            "flu_last_layer": (2, 8),                    # 3
            "flu_n_layers": (1, 7),                      # 1
            "flu_n_params": (3_932_160, 27_525_120),     # 3,932,160: one MLP
            "top_head_layer": (10, 15),                  # 12
            "top_head_effect": (0.15, 1.0),              # 0.408
            "mlp_subject_peak_layer": (0, 6),            # 3
            "n_params_all_mlps": (70_778_880, 70_778_880),
            "n_params_non_localized": (100_279_296, 100_279_296),
            "matched_max_ratio": (0.5, 1.0),             # 1.0: budget-matched localizations never exceed FLU
            "matched_min_ratio": (0.2, 1.0),             # 0.417
        },
        # all 1,559 athletes read (609 known), attribution patching of 128, activation patching of 32, causal
        # tracing of 16, seed 0; measured values in the comments (14 min on 2 CPU cores)
        "full": {
            "n_athletes": (1559, 1559),
            "n_known": (590, 630),                       # 609
            "majority": (0.4, 0.48),                     # 0.439 (football)
            "best_probe_acc_last_subject": (0.82, 0.95),  # 0.895
            "best_probe_acc_final": (0.92, 1.0),         # 0.970
            "probe_acc_embed_final": (0.4, 0.48),        # 0.439 = the majority class
            "best_probe_layer_final": (12, 18),          # 15
            "flu_first_layer": (1, 3),                   # 2
            "flu_last_layer": (4, 7),                    # 5: layers 2-5
            "flu_n_layers": (3, 6),                      # 4
            "flu_extraction": (11, 13),                  # 12 (a12.h2)
            "flu_n_params": (11_796_480, 23_592_960),    # 15,728,640: four MLPs
            "top_head_layer": (11, 13),                  # 12
            "mlp_subject_peak_layer": (2, 4),            # 3
            "matched_max_ratio": (0.5, 1.0),             # 1.0
            "matched_min_ratio": (0.5, 1.0),             # 0.813
        },
    },
    # FAST: registry.FAST_COMPONENTS (notebook 03's full-size choice: FLU m2-m5), 3 localizations x 2 tasks of 4 facts,
    # 5-step edits at 3x the tuned learning rate, 200 athletes scored (82 known), seed 0; measured in the comments
    "04_masked_editing": {
        "fast": {
            "n_localizations": (3, 3),
            "flu_n_params": (15_728_640, 15_728_640),
            "base_unchanged": (1, 1),                    # the loaded model is bit-for-bit the base model
            "roundtrip_exact": (1, 1),                   # a saved and reloaded delta is identical
            "n_forget_basketball": (4, 4),
            "n_forget_athletes": (4, 4),
            "min_train_edit_acc_basketball": (0.5, 1.0),  # 1.0
            "min_train_edit_acc_athletes": (0.5, 1.0),    # 1.0
            "min_edit_acc_fact_basketball": (0.5, 1.0),   # 1.0: every localization learns the edit
            "min_edit_acc_fact_athletes": (0.5, 1.0),     # 1.0
            "max_forget_acc_fact_basketball": (0.0, 0.5),  # 0.0
            "max_forget_acc_fact_athletes": (0.0, 0.5),    # 0.0
            "min_maintain_acc_fact_basketball": (0.125, 1.0),  # 0.375: few maintain facts, few steps
            "min_maintain_acc_fact_athletes": (0.375, 1.0),    # 0.875
        },
        # full size: all 184 known basketball players -> golf and 16 athletes, 6 localizations (evidence-based ones
        # = notebook 03's full-size components), 40-step edits with the tuned defaults, seed 0; 82 min on one core
        "full": {
            "n_known": (560, 660),                       # 609
            "n_localizations": (6, 6),
            "flu_n_params": (15_728_640, 15_728_640),
            "base_unchanged": (1, 1),
            "roundtrip_exact": (1, 1),
            "n_forget_basketball": (150, 215),           # 184
            "n_forget_athletes": (16, 16),
            "min_train_edit_acc_basketball": (0.9, 1.0),  # 1.0
            "min_train_edit_acc_athletes": (0.9, 1.0),    # 1.0
            "min_edit_acc_fact_basketball": (0.9, 1.0),   # 1.0: every localization learns the edit
            "min_edit_acc_fact_athletes": (0.9, 1.0),     # 1.0
            **{f"edit_acc_qa_{t}_{k}": (0.8, 1.0) for t in ("basketball", "athletes")   # 1.0: it carries to QA
               for k in ("fact_lookup", "ot_causal_tracing", "ot_attribution_patching", "random", "all_mlps",
                         "non_localized")},
            "max_forget_acc_fact_basketball": (0.0, 0.1),  # 0.0
            "max_forget_acc_fact_athletes": (0.0, 0.1),    # 0.0
            # 184 players -> golf bleeds into held-out athletes of other sports (base 0.58 among the four answers)
            "min_maintain_acc_fact_basketball": (0.05, 0.45),          # 0.17 (fact lookup)
            "maintain_acc_fact_basketball_fact_lookup": (0.05, 0.45),  # 0.17
            "maintain_acc_fact_basketball_ot_causal_tracing": (0.4, 0.85),  # 0.625
            "min_maintain_acc_fact_athletes": (0.45, 1.0),             # 0.66 (OT causal tracing; base 1.0)
            "lm_loss_increase_athletes_all_mlps": (0.05, 0.5),         # 0.21: the largest side effect
            "lm_loss_increase_athletes_fact_lookup": (-0.05, 0.15),    # 0.037
        },
    },
    # FAST: forget basketball, 8 players (halves of 4), fact lookup vs OT (attribution patching) from
    # registry.FAST_COMPONENTS, 5-step edits, 3 LoRA steps; measured values in the comments (seed 0)
    "05_relearning_attacks": {
        "fast": {
            "n_edit": (8, 8),
            "edit_acc_fact_lookup": (0.5, 1.0),                      # 1.0 (0.875 with 6-step edits)
            "edit_acc_ot_attribution_patching": (0.5, 1.0),          # 1.0
            "relearn_b_step0_fact_lookup": (0.0, 0.5),               # 0.0: the edit removed the fact
            "relearn_b_step0_ot_attribution_patching": (0.0, 0.5),   # 0.0
            "relearn_a_final_fact_lookup": (0.5, 1.0),               # 1.0: the attack relearns what it trains on
            "relearn_a_final_ot_attribution_patching": (0.5, 1.0),   # 1.0
            "relearn_b_final_fact_lookup": (0.5, 1.0),               # 1.0: after such short edits the held-out
            "relearn_b_final_ot_attribution_patching": (0.5, 1.0),   # 1.0   half comes back with the trained one
            # not checked: the held-out maintain control after 3 LoRA steps on 4 players (relearn_control_final_*)
            # swings at this size (FLU m2-m5: 0.31, OT 0.06 — the short attack taught "basketball" broadly; with
            # FLU m2-m3: 0.69 and 0.94), so no range would both hold and mean something
            "soft_b_fact_lookup": (0.0, 0.5),                        # 0.0: a soft prompt does not bring it back
            "soft_b_ot_attribution_patching": (0.0, 0.5),            # 0.0
            "soft_control_fact_lookup": (0.2, 1.0),                  # 0.375 (0.63 with FLU m2-m3)
            "soft_control_ot_attribution_patching": (0.2, 1.0),      # 0.31 (0.5 with FLU m2-m3)
        },
        # full size: forget basketball, 64 known players (halves of 32), 40-step edits, LoRA rank 64 / alpha 32 /
        # lr 2e-4 for 20 steps, 8-token soft prompt for 40 steps, seed 0; ~15 min per localization on one core.
        # Measured in two runs with these settings: FLU, both OT and random; then all MLPs and non-localized.
        "full": {
            "n_edit": (64, 64),
            **{f"{m}_{k}": r for k in ("fact_lookup", "ot_causal_tracing", "ot_attribution_patching", "random",
                                       "all_mlps", "non_localized")
               for m, r in (("edit_acc", (0.9, 1.0)),                 # 1.0 each
                            ("relearn_b_step0", (0.0, 0.1)),          # 0.0: the edit removed the fact
                            ("relearn_a_final", (0.8, 1.0)),          # 1.0
                            ("relearn_b_final", (0.6, 1.0)),          # 0.97-1.0: the held-out half comes back
                            ("relearn_control_final", (0.7, 1.0)),    # 0.91-0.97
                            ("soft_b", (0.6, 1.0)),                   # 0.97-1.0
                            ("soft_control", (0.6, 1.0)))},           # 0.81-0.97
        },
    },
    # FAST: edit 8 athletes, probes on 48 maintain athletes at the final token; measured values in the comments
    "06_probing_latent_knowledge": {
        "fast": {
            "n_edit": (8, 8),
            "n_probe_facts": (30, 60),                               # 48
            "base_late_frac_true": (0.5, 1.0),                       # 0.91: before the edit the probes read the truth
            "base_final_frac_edit": (0.0, 0.25),                     # 0.0
            "base_maintain_acc_last": (0.5, 1.0),                    # 0.75
            "edit_acc_fact_lookup": (0.4, 1.0),                      # 0.75
            "edit_acc_ot_attribution_patching": (0.4, 1.0),          # 0.75
            "late_frac_true_fact_lookup": (0.35, 1.0),               # 0.69: 5-step edits leave the truth readable
            "late_frac_true_ot_attribution_patching": (0.35, 1.0),   # 0.75
            "base_window_frac_true": (0.4, 1.0),                     # 0.75 (layers 4-14)
            "window_frac_edit_fact_lookup": (0.05, 0.6),             # 0.26
            # the largest share of athletes read as their true sport plus the share read as their new one, over
            # layers and edits: a sum of two shares (up to 2) that stays <= 1 only if no athlete counts twice
            "max_frac_sum": (0.0, 1.0),
        },
        # full size: 32 athletes, 40-step edits, 6 localizations (evidence-based ones = notebook 03's full-size
        # components), probes refit on 512 maintain athletes per edited model; 33 min on one core
        "full": {
            "n_edit": (32, 32),
            "n_probe_facts": (512, 512),
            "base_late_frac_true": (0.85, 1.0),                      # 0.992
            "base_maintain_acc_last": (0.8, 1.0),                    # 0.945
            "base_window_frac_true": (0.65, 0.95),                   # 0.826 (blocks 6-14)
            **{f"edit_acc_{k}": (0.9, 1.0) for k in ("fact_lookup", "ot_causal_tracing", "ot_attribution_patching",
                                                    "random", "all_mlps", "non_localized")},  # 1.0 each
            **{f"late_frac_true_{k}": (0.0, 0.2) for k in ("fact_lookup", "ot_causal_tracing",  # 0.00-0.06
                                                          "ot_attribution_patching", "random", "all_mlps",
                                                          "non_localized")},
            "window_frac_true_fact_lookup": (0.0, 0.25),             # 0.073
            "window_frac_true_ot_causal_tracing": (0.1, 0.45),       # 0.253: the old sport stays readable mid-way
            "window_frac_true_ot_attribution_patching": (0.0, 0.25),  # 0.052
            "window_frac_true_non_localized": (0.05, 0.4),           # 0.194
            "window_frac_edit_fact_lookup": (0.7, 1.0),              # 0.878
            "window_frac_edit_ot_causal_tracing": (0.5, 0.85),       # 0.681
            "max_frac_sum": (0.0, 1.0),
        },
    },
    # FAST: non-localized edit of 8 athletes, row masks, 8 Adam steps at lr 0.5; measured values in the comments
    "07_weight_masking": {
        "fast": {
            "n_edit": (8, 8),
            "flu_share_of_delta_non_localized": (0.156, 0.158),      # FLU (m2-m5) / all attention and MLP weights
            "kept_total_non_localized": (0.05, 0.95),                # 0.31
            "edit_acc_full_non_localized": (0.5, 1.0),               # 0.875
            "edit_acc_masked_non_localized": (0.25, 1.0),            # 0.875: the kept rows carry the edit
            "min_frac_kept": (0.02, 0.4),                            # 0.17: no component's rows all dropped ...
            "max_frac_kept": (0.2, 0.8),                             # 0.44: ... nor all kept
        },
        # full size: 16 athletes, 40-step non-localized and all-MLPs edits, row masks, 60 Adam steps at lr 0.1,
        # sparsity 1.0, seed 0; 18 min on one core
        "full": {
            "n_edit": (16, 16),
            "flu_share_of_delta_non_localized": (0.156, 0.158),      # 0.157
            "flu_share_of_delta_all_mlps": (0.221, 0.223),           # 0.222
            "kept_total_non_localized": (0.01, 0.25),                # 0.070 of the delta's rows carry the edit
            "kept_total_all_mlps": (0.005, 0.2),                     # 0.036
            "flu_share_of_kept_non_localized": (0.17, 0.4),          # 0.242 > 0.157: FLU rows over-represented
            "flu_share_of_kept_all_mlps": (0.25, 0.5),               # 0.338 > 0.222
            "edit_acc_full_non_localized": (0.9, 1.0),               # 1.0
            "edit_acc_full_all_mlps": (0.9, 1.0),                    # 1.0
            "edit_acc_masked_non_localized": (0.8, 1.0),             # 1.0: the kept rows carry the edit
            "edit_acc_masked_all_mlps": (0.8, 1.0),                  # 1.0
            "maintain_acc_masked_non_localized": (0.6, 1.0),         # 0.81
            "maintain_acc_masked_all_mlps": (0.6, 1.0),              # 0.89
        },
    },
    # FAST: 8 CounterFact facts (from 200 scored), FLU and OT (attribution patching) located on 16 facts, 6-step
    # edits, 3-step relearning; measured values in the comments (seed 0)
    "08_counterfact": {
        "fast": {
            "n_facts": (8, 8),
            "base_acc_true_cf_prompt": (0.75, 1.0),      # 1.0: only known facts are edited
            "base_acc_true_cf_paraphrase": (0.5, 1.0),   # 0.94
            "base_acc_true_cf_neighborhood": (0.5, 1.0),  # 0.81
            "flu_n_layers": (1, 18),                     # 11 (m0-m10): no probes on CounterFact, see the notebook
            "edit_acc__fact-lookup": (0.5, 1.0),         # 1.0
            "edit_acc__ot-attribution-patching": (0.5, 1.0),  # 0.75
            "min_edit_acc": (0.5, 1.0),                  # 0.75
            "paraphrase_edit_acc__fact-lookup": (0.25, 1.0),  # 0.625: the edit carries over to paraphrases
            "neighborhood_acc_true__fact-lookup": (0.2, 1.0),  # 0.525 (0.81 before): some bleed to neighbours
            "relearn_acc__fact-lookup": (0.0, 0.5),      # 0.0: 3 relearning steps on half A do not bring back half B
            "relearn_acc__ot-attribution-patching": (0.0, 0.5),  # 0.0
        },
        # full size: 16 known facts (of all 2,715 scored), localized on 64 single-token facts, 6 localizations,
        # 40-step edits, 20-step LoRA relearning on half of them, seed 0; 66 min on one core
        "full": {
            "n_facts": (16, 16),
            "base_acc_true_cf_prompt": (1.0, 1.0),       # only known facts are edited
            "base_acc_true_cf_paraphrase": (0.75, 1.0),  # 0.906
            "base_acc_true_cf_neighborhood": (0.7, 1.0),  # 0.85
            "flu_n_layers": (4, 10),                     # 7 (m0-m6)
            "min_edit_acc": (0.9, 1.0),                  # 1.0 for every localization
            "paraphrase_edit_acc__fact-lookup": (0.8, 1.0),  # 1.0
            "paraphrase_edit_acc__ot-causal-tracing": (0.7, 1.0),  # 0.906
            "paraphrase_edit_acc__ot-attribution-patching": (0.65, 1.0),  # 0.875
            **{f"neighborhood_acc_true__{k}": (0.65, 0.95)   # 0.80-0.87 (0.85 before): little bleed
               for k in ("fact-lookup", "ot-causal-tracing", "ot-attribution-patching", "random", "all-mlps",
                         "non-localized")},
            **{f"relearn_acc__{k}": (0.0, 0.4)   # 0.0-0.125: training on half A does not bring back half B
               for k in ("fact-lookup", "ot-causal-tracing", "ot-attribution-patching", "random", "all-mlps",
                         "non-localized")},
        },
    },
    # FAST: 1 task (edit 8 athletes, from 200 scored athletes) x fact lookup and OT (attribution patching) from
    # registry.FAST_COMPONENTS x seeds 0, 1; 5-step edits, 3-step relearning; measured values in the comments
    "09_comparison": {
        "fast": {
            "n_cells": (4, 4),
            "n_verdicts": (7, 7),                        # 5 claims + 2 side effects against one OT variant
            "n_verdicts_with_data": (6, 6),              # no paraphrases on sports: that claim has no data
            "evaluation_rows": (15, 15),                 # forget 2 formats x 4, maintain 2 x 2, unrelated 2, text 1
            "min_edit_acc": (0.25, 1.0),                 # 0.5
            "mean_edit_acc": (0.4, 1.0),                 # 0.75
            "edit_acc__fact-lookup": (0.25, 1.0),        # 0.625
            "edit_acc__ot-attribution-patching": (0.25, 1.0),  # 0.875
            "min_maintain_acc": (0.1, 1.0),              # 0.25
            "lm_loss_change__fact-lookup": (-0.2, 0.2),  # -0.016
            "lm_loss_change__ot-attribution-patching": (-0.2, 0.2),  # -0.007
            "relearn_acc__fact-lookup": (0.0, 0.9),      # 0.5: not every held-out athlete comes back in 3 steps
            "probe_true__fact-lookup": (0.1, 0.85),      # 0.45: 5-step edits leave some of the truth readable
        },
        # full size: 5 tasks x 7 localizations (evidence-based ones = notebook 03's full-size components) x seeds
        # 0-2 = 105 cells; 40-step edits, 20-step LoRA relearning on half of each forget set, probes on sports;
        # 21.2 h of one-core time for the 104 timed cells (mean 735 s). Means over all tasks and seeds:
        "full": {
            "n_cells": (105, 105),
            "n_verdicts": (42, 42),                      # 7 claims x 2 OT variants x (sports, counterfact, all)
            "n_verdicts_with_data": (38, 38),            # no paraphrases on sports, no probes on CounterFact
            "min_edit_acc": (0.5, 1.0),                  # 0.70 (edit 64 athletes, non-localized, seed 2)
            "mean_edit_acc": (0.95, 1.0),                # 0.992
            "min_maintain_acc": (0.5, 1.0),              # 0.65
            "edit_acc__fact-lookup": (0.95, 1.0),        # 1.0
            "edit_acc__ot-causal-tracing": (0.85, 1.0),  # 0.973: with non-localized (0.979), not always taking
            **{f"maintain_acc__{k}": (0.8, 0.97)         # 0.873-0.914
               for k in ("fact-lookup", "ot-causal-tracing", "ot-mlps-only", "ot-attribution-patching", "random",
                         "all-mlps", "non-localized")},
            "relearn_acc__fact-lookup": (0.15, 0.4),     # 0.271
            "relearn_acc__ot-causal-tracing": (0.2, 0.5),  # 0.348
            "relearn_acc__ot-attribution-patching": (0.15, 0.4),  # 0.278
            "probe_true__fact-lookup": (0.0, 0.2),       # 0.101: sports edits leave little of the true sport ...
            "probe_true__ot-causal-tracing": (0.2, 0.45),  # 0.309: ... causal-tracing OT three times as much
            "probe_true__ot-attribution-patching": (0.0, 0.2),  # 0.093
            "mcq_edit_acc__fact-lookup": (0.1, 0.3),     # 0.177
            "mcq_edit_acc__ot-causal-tracing": (0.2, 0.45),  # 0.339
            "lm_loss_change__fact-lookup": (0.0, 0.15),  # 0.062
            "lm_loss_change__all-mlps": (0.08, 0.25),    # 0.148: the largest side effect on general text
            "lm_loss_change__non-localized": (-0.08, 0.04),  # -0.016
        },
    },
}


#: the model every range above was measured on
REFERENCE_MODEL = "gemma-3-270m"
COLUMNS = ["metric", "value", "low", "high", "ok", "status"]
NO_REFERENCE = "no reference"


def reference_for(model: str | None) -> str | None:
    """The model whose expected values apply to ``model`` (a name as given to ``load_model`` or recorded in
    ``metrics.json``): the embedded Gemma 3 270M under any of its aliases (``models.EMBEDDED_ALIASES``:
    None, ``"embedded"``, ``"google/gemma-3-270m"`` ...); None for any other model, which has no reference."""
    from .models import EMBEDDED_ALIASES

    return REFERENCE_MODEL if model in EMBEDDED_ALIASES else None


def check(notebook: str, metrics: dict, size: str = "fast", model: str | None = None) -> pd.DataFrame:
    """Compare a notebook's metrics with its expected ranges.

    Args:
        notebook: the notebook's stem (``"00_quickstart"``).
        metrics: the content of its ``metrics.json``.
        size: ``"fast"`` or ``"full"``.
        model: the model the notebook ran (None: the embedded one). The ranges were measured on the embedded
            model (:func:`reference_for`); another model has no reference and nothing is compared.

    Returns:
        One row per expected metric: ``metric, value, low, high, ok, status`` with ``status`` one of
        ``"ok"``, ``"out of range"``, ``"missing"`` (not a number in ``metrics``) or ``"no reference"``
        (``low``/``high`` NaN and ``ok`` None: nothing to compare with). :func:`outcome` sums them up.
    """
    if notebook not in EXPECTED:
        raise KeyError(f"No expected values for notebook {notebook!r}. Fix: add an entry to mechunlearn_nb/expected.py.")
    if size not in ("fast", "full"):
        raise ValueError(f"size must be 'fast' or 'full', got {size!r}.")
    ranges = EXPECTED[notebook].get(size, {})
    if reference_for(model) is None:
        rows = [dict(metric=m, value=metrics.get(m), low=math.nan, high=math.nan, ok=None, status=NO_REFERENCE)
                for m in ranges]
        return pd.DataFrame(rows, columns=COLUMNS)
    rows = []
    for metric, (low, high) in ranges.items():
        value = metrics.get(metric)
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        ok = number and low <= value <= high
        rows.append(dict(metric=metric, value=value, low=low, high=high, ok=bool(ok),
                         status="ok" if ok else "out of range" if number else "missing"))
    return pd.DataFrame(rows, columns=COLUMNS)


def outcome(checks: pd.DataFrame) -> str:
    """``"reproduced"`` (every expected metric in range), ``"not reproduced"`` (one or more out of range or
    missing) or ``"no reference"`` (no expected values for this model, notebook or size) for :func:`check`'s rows."""
    if len(checks) == 0 or (checks["status"] == NO_REFERENCE).all():
        return NO_REFERENCE
    return "reproduced" if checks["ok"].astype(bool).all() else "not reproduced"
