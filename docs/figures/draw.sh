set -e
C="--model make_inputs:make --data tensors:train.pt --test-data tensors:test.pt --quiet"
OUT=$1; PFX=$2; shift 2
$@ interpolate m0.pt m1.pt --num 11 --out $OUT $C
$@ plane m0.pt --through m1.pt m2.pt --out $OUT --name through --x -0.3:1.3:9 --y -0.3:1.3:9 $C
$@ plane m0.pt --random filter --project m1.pt m2.pt --out $OUT --name random --x -1:1:9 --y -1:1:9 $C
$@ barriers m0.pt m1.pt m2.pt --num 5 --out $OUT $C
$@ ensemble m0.pt m1.pt m2.pt --model make_inputs:make --data tensors:test.pt --out $OUT --quiet
for n in interpolate through random barriers ensemble; do $@ plot $OUT $n -o ${PFX}_$n.png; done
$@ plot $OUT through --style filled --log -o ${PFX}_through_log.png
