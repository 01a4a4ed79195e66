# Shared by the recipe launchers (sourced, not run). A launcher sets RECIPE and calls run_recipe "$@".
#
# Environment (all optional):
#   NNODES=1          nodes in the Ray cluster (start Ray on every node first for NNODES > 1)
#   N_GPUS=8          GPUs per node
#   DATA_DIR=$HOME/data/verl_repro   where scripts/prepare_data.py wrote the parquet files
#   TRAIN_DATA=dapo_math_17k         training set file name (without .parquet)
#   VAL_DATA="aime_2024 aime_2025 amc_2023 math_500"   validation sets
#   PYTHON=python3    interpreter with verl and verl-repro installed
# Flags: --dry-run (validate the full config on the CPU, start nothing), --cpu-smoke (a few steps
# on a tiny model on the CPU), -h/--help. Every other argument is a Hydra override for veRL.

RECIPE_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
NNODES="${NNODES:-1}"
N_GPUS="${N_GPUS:-8}"
DATA_DIR="${DATA_DIR:-$HOME/data/verl_repro}"
TRAIN_DATA="${TRAIN_DATA:-dapo_math_17k}"
VAL_DATA="${VAL_DATA:-aime_2024 aime_2025 amc_2023 math_500}"
PYTHON="${PYTHON:-python3}"

recipe_usage() {
  sed -n '2,/^set /p' "$RECIPE_DIR/$RECIPE.sh" | sed -n 's/^# \{0,1\}//p'
}

run_recipe() {
  local mode=train
  local overrides=()
  local arg
  for arg in "$@"; do
    case "$arg" in
      --dry-run) mode=dry-run ;;
      --cpu-smoke) mode=cpu-smoke ;;
      --print-command) overrides+=("$arg") ;;
      -h|--help) recipe_usage; return 0 ;;
      *) overrides+=("$arg") ;;
    esac
  done

  local val_files="" name
  for name in $VAL_DATA; do
    val_files="${val_files:+$val_files,}'$DATA_DIR/$name.parquet'"
  done
  local cluster=(
    "trainer.nnodes=$NNODES"
    "trainer.n_gpus_per_node=$N_GPUS"
    "data.train_files=$DATA_DIR/$TRAIN_DATA.parquet"
    "data.val_files=[$val_files]"
  )

  case "$mode" in
    dry-run)
      exec "$PYTHON" "$RECIPE_DIR/launch.py" dry-run "$RECIPE" "${cluster[@]}" ${overrides[@]+"${overrides[@]}"}
      ;;
    cpu-smoke)
      # Tiny model + tiny data on the CPU through verl_repro.cpu (what verl-repro cpu-run --smoke runs).
      exec "$PYTHON" "$RECIPE_DIR/launch.py" cpu-smoke "$RECIPE" ${overrides[@]+"${overrides[@]}"}
      ;;
    train)
      echo "+ $PYTHON -m verl.trainer.main_ppo --config-path=$RECIPE_DIR --config-name=$RECIPE ${cluster[*]} ${overrides[*]+${overrides[*]}}" >&2
      exec "$PYTHON" -m verl.trainer.main_ppo --config-path="$RECIPE_DIR" --config-name="$RECIPE" \
        "${cluster[@]}" ${overrides[@]+"${overrides[@]}"}
      ;;
  esac
}
